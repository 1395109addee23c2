"""Evaluation sets with ground truth: seeded LR/HR pairs made from clean portraits.

The HR is the portrait itself (at the output size); the LR is what the pipeline gets:

- ``none`` (*clean*): the x``scale`` antialiased bicubic downscale of the HR (MATLAB
  ``imresize`` / PIL semantics) -- the seed scenario, clean AI headshots upscaled x4;
- ``light`` / ``medium`` / ``strong`` (*degraded*): a second-order degradation in the style of
  Real-ESRGAN (Wang et al., ICCVW 2021, Sec. 3): twice in a row blur, resize, noise and JPEG,
  each drawn at random within the strength's ranges (:data:`STRENGTHS`), the second resize
  landing exactly on the LR size.  Simplified from the paper: Gaussian kernels only
  (isotropic or anisotropic, rotated), no sinc filter, no final sinc ring.

Every draw comes from ``numpy.random.default_rng([seed, crc32(name)])``: the same portrait,
strength and seed give the same bytes with the same numpy and OpenCV versions (the test pins
them for the versions in use: ``tests/test_degrade.py``), and the recipe, not thousands of
files, is what ships.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import ConfigError
from .images import downscale


@dataclass(frozen=True)
class Strength:
    blur: tuple[float, float]  # Gaussian sigma range, px of the image being blurred
    noise: tuple[float, float]  # Gaussian noise sigma range, grey levels of 255
    poisson: tuple[float, float]  # Poisson noise scale range (photons per grey level: lower = noisier)
    jpeg: tuple[int, int]  # JPEG quality range
    first_scale: tuple[float, float]  # the first resize, as a share of the way from HR to LR size


STRENGTHS = {
    "light": Strength(blur=(0.2, 0.8), noise=(0.0, 3.0), poisson=(4.0, 8.0), jpeg=(85, 95), first_scale=(0.3, 0.6)),
    "medium": Strength(blur=(0.4, 1.5), noise=(1.0, 8.0), poisson=(1.0, 4.0), jpeg=(60, 90), first_scale=(0.3, 0.8)),
    "strong": Strength(blur=(0.8, 2.5), noise=(3.0, 15.0), poisson=(0.3, 1.5), jpeg=(40, 75), first_scale=(0.5, 1.0)),
}
LEVELS = ("none", *STRENGTHS)


def crop_to_scale(hr: np.ndarray, scale: int) -> np.ndarray:
    h, w = hr.shape[0] // scale * scale, hr.shape[1] // scale * scale
    if h == 0 or w == 0:
        raise ConfigError(f"an image of {hr.shape[1]}x{hr.shape[0]} px is smaller than the x{scale} pair scale")
    return hr[:h, :w]


def make_lr(hr: np.ndarray, *, scale: int, level: str, seed: int, name: str) -> np.ndarray:
    """The LR of ``hr`` (sides multiples of ``scale``) for degradation ``level``; RGB float32 [0, 1]."""
    if level not in LEVELS:
        raise ConfigError(f"dataset.pairs.degradation must be one of {LEVELS}, got {level!r}")
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    if level == "none":  # 8-bit, as a real input is
        return (np.round(downscale(hr, (h, w)) * 255) / 255).astype(np.float32)
    s = STRENGTHS[level]
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
    x = hr.astype(np.float32)
    share = rng.uniform(*s.first_scale)  # first resize: part of the way down
    mid = (max(int(round(hr.shape[0] / (1 + share * (scale - 1)))), 1),
           max(int(round(hr.shape[1] / (1 + share * (scale - 1)))), 1))
    for size in (mid, (h, w)):
        x = _blur(x, rng, s.blur)
        interp = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC)[int(rng.integers(3))]
        x = np.clip(cv2.resize(x, (size[1], size[0]), interpolation=interp), 0, 1)
        x = _noise(x, rng, s)
        x = _jpeg(x, int(rng.integers(s.jpeg[0], s.jpeg[1] + 1)))
    return x.astype(np.float32)


def _blur(x: np.ndarray, rng: np.random.Generator, sigmas: tuple[float, float]) -> np.ndarray:
    sx, sy = rng.uniform(*sigmas), rng.uniform(*sigmas)
    if rng.random() < 0.5:  # isotropic half of the time
        sy = sx
    theta = rng.uniform(0, np.pi)
    r = int(np.ceil(3 * max(sx, sy)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    u, v = np.cos(theta) * xx + np.sin(theta) * yy, -np.sin(theta) * xx + np.cos(theta) * yy
    k = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    return np.clip(cv2.filter2D(x, -1, (k / k.sum()).astype(np.float32), borderType=cv2.BORDER_REFLECT), 0, 1)


def _noise(x: np.ndarray, rng: np.random.Generator, s: Strength) -> np.ndarray:
    grey = rng.random() < 0.4  # the same noise in every channel
    shape = x.shape[:2] + ((1,) if grey else (x.shape[2],))
    if rng.random() < 0.5:
        n = rng.normal(0.0, rng.uniform(*s.noise) / 255.0, size=shape)
        return np.clip(x + n.astype(np.float32), 0, 1)
    lam = rng.uniform(*s.poisson) * 255.0  # photons at white
    base = x.mean(axis=2, keepdims=True) if grey else x
    noisy = rng.poisson(np.clip(base, 0, 1) * lam) / lam
    return np.clip(x + (noisy - base).astype(np.float32), 0, 1)


def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    u8 = (np.clip(x, 0, 1) * 255).round().astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(u8, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ConfigError("degradation: JPEG encoding failed")
    back = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if back is None:
        raise ConfigError("degradation: JPEG decoding failed")
    return cv2.cvtColor(back, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def in_validation(name: str, fraction: float = 0.3) -> bool:
    """The fixed train/validation split by portrait: ``name`` is in the validation part when its
    crc32 falls in the lowest ``fraction`` of the range (stable across machines and runs)."""
    return zlib.crc32(name.encode()) % 1000 < int(round(fraction * 1000))
