"""Output blends with a classic upscale R of the input (Lanczos, :func:`tuner.images.reference_upscale`),
the honest anti-crunch knob.

``amount`` in [0, 1]: 0 returns the SR result unchanged, 1 returns R (within the mask).
Variants:
- ``global``: ``(1 - a) * O + a * R`` everywhere;
- ``skin``: the same, weighted by a soft skin mask (hair, eyes and background stay SR);
- ``frequency``: keep the low frequencies of O, mix only the high frequencies
  (``O - G(O)`` vs ``R - G(R)``, Gaussian G with sigma = scale / 2 output pixels), so
  the blend removes synthesized texture without softening tone or edges' positions.
"""

from __future__ import annotations

import cv2
import numpy as np

from .errors import ConfigError

VARIANTS = ("global", "skin", "frequency")


def blend(sr: np.ndarray, ref: np.ndarray, *, amount: float, variant: str = "global",
          skin: np.ndarray | None = None, scale: float = 4.0) -> np.ndarray:
    """Blend SR output ``sr`` with reference ``ref`` (same shape, RGB float)."""
    if not 0.0 <= amount <= 1.0:
        raise ConfigError(f"params.blend must be in [0, 1], got {amount}")
    if variant not in VARIANTS:
        raise ConfigError(f"unknown blend variant {variant!r}; use one of {VARIANTS}")
    if amount == 0.0:
        return sr
    if variant == "global":
        out = (1.0 - amount) * sr + amount * ref
    elif variant == "skin":
        if skin is None:
            raise ConfigError("blend variant 'skin' needs a skin mask")
        soft = cv2.GaussianBlur(skin.astype(np.float32), (0, 0), max(scale, 1.0))
        a = (amount * soft)[:, :, None]
        out = (1.0 - a) * sr + a * ref
    else:
        sigma = max(scale / 2.0, 0.5)
        low = cv2.GaussianBlur(sr, (0, 0), sigma)
        high_sr = sr - low
        high_ref = ref - cv2.GaussianBlur(ref, (0, 0), sigma)
        out = low + (1.0 - amount) * high_sr + amount * high_ref
    return np.clip(out, 0.0, 1.0).astype(np.float32)
