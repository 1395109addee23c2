"""Full-reference metrics against the ground truth, where a dataset has it (LR/HR pairs).

Where no truth exists (real inputs) every one of them is NaN with the note "no ground truth".

- ``texture_hr`` / ``pores_hr``: skin texture against the HR's, **octaves** (log2 of the energy
  ratio; 0 = the real photograph's texture, +1 = twice its energy, -1 = half): the output's
  energy over skin in :func:`tuner.metrics.skin.crunch`'s band (centred on the input's Nyquist
  frequency) and in :func:`tuner.metrics.skin.wax`'s pore band, over the HR's;
- ``lbp_hr``: texture *statistics* on skin -- the Jensen-Shannon distance (base 2, 0..1) between
  the uniform LBP histograms of output and HR at pore scale, so invented patterns cost even at
  the right energy;
- ``ssim_hr``: SSIM of luminance (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03);
- ``haarpsi_hr``: HaarPSI (Reisenhofer et al. 2018; ``piq``, Apache-2.0, no downloaded weights),
  a perceptual FR score in [0, 1], on the output and HR resized to the NR analysis size.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..images import luminance
from .context import Context
from .skin import _hf, _lbp_codes, _mid, _skin_crops, face_energies, skin_energy


def _truth(ctx: Context, name: str) -> np.ndarray | None:
    if ctx.ref.hr is None:
        ctx.notes[name] = "no ground truth"
        return None
    return ctx.ref.hr


def _octaves(ctx: Context, name: str, band) -> list[float]:  # type: ignore[no-untyped-def]
    """log2 of the output's energy over the truth's: all the skin, then each face judged on its own."""
    if _truth(ctx, name) is None or _skin_crops(ctx, name) is None:
        return []
    o, hr = face_energies(ctx, band), face_energies(ctx, band, "HR")
    return [math.log2((skin_energy(ctx, band) + 1e-10) / (skin_energy(ctx, band, "HR") + 1e-10)),
            *(math.log2((o[i] + 1e-10) / (hr[i] + 1e-10)) for i in o)]


def texture_hr(ctx: Context) -> float:
    """Skin texture against the truth, octaves (0 = the HR's; + more, - less): crunch's band.  With
    several faces, the crunchiest of all the skin and each face judged on its own (as
    :func:`tuner.metrics.skin.crunch`), so its gate holds for every face."""
    v = _octaves(ctx, "texture_hr", _hf)
    return max(v) if v else math.nan


def texture_hr_least(ctx: Context) -> float:
    """texture_hr of the least textured of all the skin and each face judged on its own (= texture_hr with one
    face): what an objective term with a target reads beside ``texture_hr`` (see :func:`tuner.metrics.skin.crunch_least`)."""
    v = _octaves(ctx, "texture_hr_least", _hf)
    return min(v) if v else math.nan


def pores_hr(ctx: Context) -> float:
    """Pore-band skin texture against the truth, octaves (0 = the HR's): wax's band, over all the skin."""
    v = _octaves(ctx, "pores_hr", _mid)
    return v[0] if v else math.nan


def _hist(codes: np.ndarray) -> np.ndarray:
    h = np.bincount(codes.astype(int), minlength=10).astype(np.float64)
    return h / max(h.sum(), 1.0)


def lbp_hr(ctx: Context) -> float:
    """Jensen-Shannon distance (0..1, lower better) of skin LBP statistics, output versus the truth."""
    from scipy.spatial.distance import jensenshannon

    if _truth(ctx, "lbp_hr") is None:
        return math.nan
    c = _skin_crops(ctx, "lbp_hr")
    if c is None:
        return math.nan
    yo, _, m = c
    memo = ctx.ref.memo
    if "hr_lbp" not in memo:
        box = ctx.ref.skin_box
        assert box is not None and ctx.ref.hr is not None
        codes, mm = _lbp_codes(luminance(ctx.ref.hr)[box], m, ctx.ref.scale)
        memo["hr_lbp"] = _hist(codes[mm]) if mm.any() else None
    codes, mm = _lbp_codes(yo, m, ctx.ref.scale)
    if memo["hr_lbp"] is None or not mm.any():
        ctx.notes["lbp_hr"] = "skin region too small for LBP at pore scale"
        return math.nan
    return float(jensenshannon(_hist(codes[mm]), memo["hr_lbp"], base=2))


def ssim_hr(ctx: Context) -> float:
    """SSIM of luminance against the truth (higher better, 1 = identical)."""
    from skimage.metrics import structural_similarity

    hr = _truth(ctx, "ssim_hr")
    if hr is None:
        return math.nan
    return float(structural_similarity(ctx.y_out, luminance(hr), data_range=1.0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def haarpsi_hr(ctx: Context) -> float:
    """HaarPSI against the truth (higher better, 0..1), at the NR analysis size."""
    import piq
    import torch

    hr = _truth(ctx, "haarpsi_hr")
    if hr is None:
        return math.nan
    out = ctx.iqa_image
    if hr.shape[:2] != out.shape[:2]:
        hr = np.clip(cv2.resize(hr, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_AREA), 0, 1)
    if min(out.shape[:2]) < 32:
        ctx.notes["haarpsi_hr"] = "image under 32 px"
        return math.nan

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))[None]

    with torch.no_grad():
        return float(piq.haarpsi(t(out), t(hr), data_range=1.0))
