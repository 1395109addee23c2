"""Real-ESRGAN upscaling with exactly RealESRGANer's semantics, plus DNI and feathered tiles.

Reimplemented (rather than wrapping ``realesrgan.RealESRGANer``) so that a failing tile
raises instead of being printed and skipped, and so the optional overlap-feathered
tiling can share the same loop.  ``tests/test_upscale.py`` proves the output matches
RealESRGANer within 1 LSB at tile 0 and tile > 0.

Semantics kept from RealESRGANer (realesrgan/utils.py):
- ``pre_pad`` reflect-pads right and bottom only, cropped after the network;
- scale-2 and scale-1 models get a reflect pad to a multiple of 2 / 4;
- ``tile`` splits the padded input into tile x tile squares, each run with ``tile_pad``
  pixels of context and hard-pasted;
- ``outscale`` different from the model scale resizes the result with Lanczos;
- fp16 only on CUDA.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from . import archs
from .errors import ConfigError, PipelineError, WeightsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpscaleOptions:
    """Knobs of the upscale stage.  ``tile`` 0 = whole image; sizes in input pixels."""

    tile: int = 0
    tile_pad: int = 10
    pre_pad: int = 10
    overlap: int = 0
    outscale: float | None = None
    half: bool = False

    def __post_init__(self) -> None:
        if self.tile < 0 or self.tile_pad < 0 or self.pre_pad < 0 or self.overlap < 0:
            raise ConfigError(f"upscale options must be >= 0: {self}")
        if self.tile and self.overlap * 2 >= self.tile:
            raise ConfigError(f"upscale.overlap={self.overlap} must be less than half of tile={self.tile}")
        if self.outscale is not None and self.outscale <= 0:
            raise ConfigError(f"upscale.outscale must be > 0, got {self.outscale}")


def arch_scale(arch: Mapping[str, Any]) -> int:
    """The network's integer scale factor (``scale`` for RRDBNet, ``upscale`` for SRVGGNetCompact)."""
    return int(arch.get("scale") or arch.get("upscale") or 4)


# Memory of the upscale stage, from measured peak RSS (`benchmarks/bench_memory.py --calibrate`,
# torch 2.14 CPU, float32).  One forward pass of the network over a region of A input
# pixels (a tile with its context, or the whole padded image) keeps at its peak about
#   SRVGGNetCompact: 3 x max(num_feat, 3 s^2) floats per pixel (a conv's input, output and PReLU
#                    output at num_feat channels; at the tail the last conv, the pixel shuffle and the
#                    nearest-upsampled base at 3 s^2 channels): measured 131/195/384 at num_feat
#                    32/64/128 (s = 4), 195 at num_feat 64, s = 2;
#   RRDBNet:         3.6 x num_feat x s^2 floats per pixel (the two nearest-x2 upsamples and the convs
#                    after them run num_feat channels at s^2 x the area): measured 3.5-3.9.
# The constants below round those up; SR_FORWARD_OVERHEAD covers allocator fragmentation and
# oneDNN scratch, which dominate small tiles (measured up to 35 MB at 128-276 px regions).
_SRVGG_FLOATS = 3.25
_RRDB_FLOATS = 4.0
SR_FORWARD_OVERHEAD = 48 << 20
# After the network: the output tensor, its clamped copy and the contiguous HWC array, 4 bytes
# per value x 3 channels each (measured 37.6-40 bytes per output pixel at tile 32).
_SR_TAIL_BYTES_PER_OUT_PX = 36
# glibc serves blocks below its mmap threshold (at most 32 MiB on 64-bit) from the heap and keeps
# them after they are freed, so a forward pass whose feature maps are all smaller than that (tiles
# up to ~256 px) stays resident through the later stages: measured at tile 256 on a 512^2 input,
# peak RSS 358 MB against 244 MB untiled.
_HEAP_RETAINED_BELOW = 32 << 20
# On CUDA (torch 2.11, H200, max_memory_allocated): SRVGGNetCompact keeps 1.25x and RRDBNet 1.06x
# the CPU's activations, and cuDNN's workspace added up to ~540 MB at 532 px tiles (fp32 and fp16
# alike).  CUDA_FACTOR and CUDA_WORKSPACE cover both.
CUDA_FACTOR = 1.3
CUDA_WORKSPACE = 1 << 30


def network_bytes_per_px(arch: Mapping[str, Any], *, half: bool = False) -> float:
    """Peak activation bytes per input pixel of one forward pass (fp32 unless ``half``)."""
    kind = archs.get(arch.get("type"), kind="sr").name  # an unknown type fails here, naming close ones
    s = arch_scale(arch)
    feat = int(arch.get("num_feat", 64))
    if kind == "SRVGGNetCompact":
        floats = _SRVGG_FLOATS * max(feat, 3 * s * s)
    elif kind == "RRDBNet":
        floats = _RRDB_FLOATS * feat * s * s
    else:  # a new row of the architecture table needs its own calibration (benchmarks/bench_memory.py)
        raise ConfigError(f"no memory estimate for SR architecture {kind}; calibrate it in tuner/upscale.py")
    return floats * (2 if half else 4)


def _largest_map_values_per_px(arch: Mapping[str, Any]) -> int:
    """Values per input pixel of the network's largest single feature map."""
    s = arch_scale(arch)
    feat = int(arch.get("num_feat", 64))
    return max(feat, 3 * s * s) if arch.get("type") == "SRVGGNetCompact" else feat * s * s


@dataclass(frozen=True)
class UpscaleMemory:
    """Estimated peak bytes of the upscale stage for one input (beyond the loaded model).

    - ``network``: the largest forward pass (activations) on the CPU;
    - ``network_cuda``: the same on CUDA (accelerator memory, cuDNN's workspace included);
    - ``tiles_out``: the full-size output tensor the tiles are pasted into (0 at tile 0);
    - ``tail``: host buffers after the network (output, clamped copy, HWC array, outscale resize);
    - ``retained``: what the allocator keeps of the network's memory through the later stages;
    - ``out_pixels``: pixels of the stage's output (after ``outscale``).
    """

    network: int
    network_cuda: int
    tiles_out: int
    tail: int
    retained: int
    out_pixels: int

    def host_peak(self, *, on_device: bool) -> int:
        if on_device:
            return self.tail
        return max(self.network + self.tiles_out, self.tail)

    def device_peak(self, *, on_device: bool) -> int:
        return self.network_cuda + self.tiles_out if on_device else 0


def min_input_side(arch: Mapping[str, Any], pre_pad: int) -> int:
    """The smallest input side :meth:`Upscaler.__call__` can take: its reflect pads (``pre_pad``, then
    the pad to a multiple of 2 / 4 of scale-2 and scale-1 models) must each be smaller than the side
    they pad, or torch raises."""
    mod = {2: 2, 1: 4}.get(arch_scale(arch), 1)
    side = pre_pad + 1
    while (mod - (side + pre_pad) % mod) % mod >= side + pre_pad:
        side += 1
    return side


def upscale_memory(arch: Mapping[str, Any], size: tuple[int, int], opts: UpscaleOptions) -> UpscaleMemory:
    """Peak memory of :meth:`Upscaler.__call__` on an input of ``size`` = (H, W) with ``opts``.

    Pure arithmetic on sizes (nothing is allocated), so it can refuse or tile an input before
    any work; compared with measured peak RSS in ``benchmarks/bench_memory.py``.
    """
    s = arch_scale(arch)
    h, w = size
    hp, wp = h + opts.pre_pad, w + opts.pre_pad
    mod = {2: 2, 1: 4}.get(s)
    if mod:
        hp, wp = hp + (mod - hp % mod) % mod, wp + (mod - wp % mod) % mod
    if opts.tile > 0:
        ext = opts.tile + 2 * (opts.overlap + opts.tile_pad)
        region = min(ext, hp) * min(ext, wp)
    else:
        region = hp * wp
    half = opts.half
    value = 2 if half else 4
    padded_out = hp * s * wp * s
    activations = network_bytes_per_px(arch, half=half) * region
    network = int(activations) + SR_FORWARD_OVERHEAD
    network_cuda = int(CUDA_FACTOR * activations) + SR_FORWARD_OVERHEAD + CUDA_WORKSPACE
    small_maps = _largest_map_values_per_px(arch) * region * value < _HEAP_RETAINED_BELOW
    retained = network if small_maps else SR_FORWARD_OVERHEAD
    tiles_out = padded_out * (3 + (1 if opts.overlap else 0)) * value if opts.tile > 0 else 0
    tail = _SR_TAIL_BYTES_PER_OUT_PX * padded_out
    out_pixels = h * s * w * s
    if opts.outscale is not None and opts.outscale != float(s):
        out_pixels = int(w * opts.outscale) * int(h * opts.outscale)
        # the x s result, cv2's resize, np.clip and the float32 copy of the resized image
        tail = max(tail, 12 * h * s * w * s + 36 * out_pixels)
    return UpscaleMemory(network=network, network_cuda=network_cuda, tiles_out=tiles_out, tail=tail,
                         retained=retained, out_pixels=out_pixels)


def build_network(arch: Mapping[str, Any]) -> Any:
    """Instantiate RRDBNet or SRVGGNetCompact from an ``arch`` mapping (type + hyper-parameters; see :mod:`tuner.archs`)."""
    return archs.build(arch, kind="sr")


def interpolate(state_dicts: Sequence[Mapping[str, Any]], weights: Sequence[float]) -> dict[str, Any]:
    """Deep network interpolation: every parameter becomes ``w0*a + w1*b`` (RealESRGANer.dni)."""
    if len(state_dicts) != 2 or len(weights) != 2:
        raise ConfigError("DNI needs exactly two state dicts and two weights")
    a, b = state_dicts
    if set(a) != set(b):
        raise WeightsError("cannot interpolate: the two checkpoints have different parameter names (architectures differ)")
    out = {}
    for k in a:
        if a[k].shape != b[k].shape:
            raise WeightsError(f"cannot interpolate: parameter {k} has shapes {tuple(a[k].shape)} vs {tuple(b[k].shape)}")
        out[k] = weights[0] * a[k] + weights[1] * b[k]
    return out


class Upscaler:
    """A loaded SR network and the RealESRGANer-equivalent inference around it."""

    def __init__(self, net: Any, *, scale: int, device: str = "cpu", half: bool = False) -> None:
        import torch

        self.scale = int(scale)
        self.device = torch.device(device)
        self.half = bool(half) and self.device.type == "cuda"
        self.net = net.eval().to(self.device)
        if self.half:
            self.net = self.net.half()

    @classmethod
    def from_state_dict(cls, arch: Mapping[str, Any], sd: Mapping[str, Any], *, device: str = "cpu",
                        half: bool = False) -> Upscaler:
        net = build_network(arch)
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise WeightsError(f"checkpoint does not fit architecture {dict(arch)}: {str(e).splitlines()[0]}") from e
        return cls(net, scale=arch_scale(arch), device=device, half=half)

    def __call__(self, rgb: np.ndarray, opts: UpscaleOptions = UpscaleOptions()) -> np.ndarray:
        """Upscale an RGB float32 (H, W, 3) image in [0, 1]; returns RGB float32 in [0, 1]."""
        import torch
        import torch.nn.functional as F

        h_in, w_in = rgb.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().unsqueeze(0).to(self.device)
        if self.half:
            x = x.half()
        if opts.pre_pad:
            x = F.pad(x, (0, opts.pre_pad, 0, opts.pre_pad), "reflect")
        mod = {2: 2, 1: 4}.get(self.scale)
        mph = mpw = 0
        if mod:
            h, w = x.shape[2:]
            mph = (mod - h % mod) % mod
            mpw = (mod - w % mod) % mod
            x = F.pad(x, (0, mpw, 0, mph), "reflect")
        with torch.inference_mode():
            if opts.tile > 0:
                y = self._tiled(x, opts)
            else:
                y = self._run(x, where="whole image")
        s = self.scale
        if mod:
            y = y[:, :, : y.shape[2] - mph * s, : y.shape[3] - mpw * s]
        if opts.pre_pad:
            y = y[:, :, : y.shape[2] - opts.pre_pad * s, : y.shape[3] - opts.pre_pad * s]
        out = y.squeeze(0).float().cpu().clamp(0, 1).numpy().transpose(1, 2, 0)
        out = np.ascontiguousarray(out, dtype=np.float32)
        if opts.outscale is not None and opts.outscale != float(s):
            size = (int(w_in * opts.outscale), int(h_in * opts.outscale))
            out = np.clip(cv2.resize(out, size, interpolation=cv2.INTER_LANCZOS4), 0, 1).astype(np.float32)
        return out

    def _run(self, x: Any, *, where: str) -> Any:
        try:
            return self.net(x)
        except Exception as e:  # re-raised with context: never print-and-continue
            if is_out_of_memory(e):
                if self.device.type == "cuda":
                    import torch

                    torch.cuda.empty_cache()  # give the failed tile's blocks back before the next trial
                raise PipelineError(
                    f"out of memory upscaling {where} (input {tuple(x.shape)}) on {self.device}: "
                    f"{str(e).strip().splitlines()[0]}. A smaller params.tile needs less memory "
                    f"(limits.max_memory_gb bounds tile=auto)") from e
            raise PipelineError(f"upscale failed on {where} (input {tuple(x.shape)}): {e}") from e

    def _tiled(self, img: Any, opts: UpscaleOptions) -> Any:
        _, c, height, width = img.shape
        s, t, pad, ov = self.scale, opts.tile, opts.tile_pad, opts.overlap
        out = img.new_zeros((1, c, height * s, width * s))
        wsum = img.new_zeros((1, 1, height * s, width * s)) if ov else None
        for ty in range(math.ceil(height / t)):
            for tx in range(math.ceil(width / t)):
                # core tile, optionally extended by the feathering overlap
                x0, x1 = tx * t, min(tx * t + t, width)
                y0, y1 = ty * t, min(ty * t + t, height)
                if ov:
                    x0, x1, y0, y1 = max(x0 - ov, 0), min(x1 + ov, width), max(y0 - ov, 0), min(y1 + ov, height)
                px0, px1 = max(x0 - pad, 0), min(x1 + pad, width)
                py0, py1 = max(y0 - pad, 0), min(y1 + pad, height)
                tile_out = self._run(img[:, :, py0:py1, px0:px1], where=f"tile (x={tx}, y={ty})")
                oy, ox = (y0 - py0) * s, (x0 - px0) * s
                part = tile_out[:, :, oy : oy + (y1 - y0) * s, ox : ox + (x1 - x0) * s]
                if not ov:
                    out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = part
                    continue
                wy = _ramp(y0, y1, height, ov, s, img)
                wx = _ramp(x0, x1, width, ov, s, img)
                w = wy[:, None] * wx[None, :]
                out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] += part * w
                wsum[:, :, y0 * s : y1 * s, x0 * s : x1 * s] += w  # type: ignore[index]
        if wsum is not None:
            out = out / wsum.clamp_min(1e-8)
        return out


def is_out_of_memory(e: BaseException) -> bool:
    """An allocation failure: Python's MemoryError, torch's OutOfMemoryError (CUDA), or the CPU
    allocator's "can't allocate memory" RuntimeError."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in msg or "out of memory" in msg.lower())


def _ramp(a: int, b: int, n: int, ov: int, s: int, like: Any) -> Any:
    """1-D feather weights over output pixels of [a, b): linear over 2*ov at interior edges.

    Neighbouring extended tiles overlap by 2*ov input pixels; their ramps sum to 1 there.
    """
    import torch

    pos = torch.arange((b - a) * s, dtype=like.dtype, device=like.device) + 0.5
    w = torch.ones_like(pos)
    span = 2 * ov * s
    if a > 0:
        w = torch.minimum(w, pos / span)
    if b < n:
        w = torch.minimum(w, ((b - a) * s - pos) / span)
    return w.clamp_(0, 1)
