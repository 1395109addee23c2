"""PIQE (Perception-based Image Quality Evaluator), as MATLAB's ``piqe()`` computes it.

Venkatanath et al., "Blind Image Quality Evaluation Using Perception Based Features",
NCC 2015.  A numpy port of pyiqa's ``piqe`` (which matches MATLAB's values on pyiqa's
calibration images to 4 decimals), kept line-for-line equivalent so the numbers do not
change, including MATLAB's quirks: the image is padded by ``size % 16`` (not up to a multiple
of 16) and the block "surround" drops columns 8 and 10 (1-based), not 8 and 9.
No model and no weights.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import MetricError
from .nss import mscn

BLOCK = 16
ACTIVITY_THRESHOLD = 0.1
IMPAIRED_THRESHOLD = 0.1
SEGMENT = 6
YIQ_Y = np.array([0.299, 0.587, 0.114])


def _symmetric_pad_end(img: np.ndarray, rows: int, cols: int) -> np.ndarray:
    # MATLAB padarray(..., 'symmetric', 'post'): mirror including the edge pixel
    return np.pad(img, ((0, rows), (0, cols)), mode="symmetric")


def _std(x: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    return np.std(x, axis=axis, ddof=1)


def _centre_surround_ratio(blocks: np.ndarray) -> np.ndarray:
    """Std of the two centre columns over std of the "surround" (see the module note)."""
    n = blocks.shape[-1] - 1
    c1 = (n + 1) // 2  # 1-based centre columns c1, c1 + 1
    centre = blocks[..., [c1 - 1, c1]]
    surround = np.delete(np.delete(blocks, c1 - 1, axis=-1), c1, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = _std(centre.reshape(len(blocks), -1), 1) / _std(surround.reshape(len(blocks), -1), 1)
    # torch.nan_to_num in pyiqa's float32 maps x/0 = inf to float32's max
    return np.nan_to_num(r, nan=0.0, posinf=float(np.finfo(np.float32).max))


def _impaired(blocks: np.ndarray) -> np.ndarray:
    """Blocks with a low-variance 6-pixel segment on any edge (blockiness / flat patches)."""
    edges = [blocks[:, 0, :], blocks[:, :, -1], blocks[:, -1, :], blocks[:, :, 0]]
    hit = np.zeros(len(blocks), dtype=bool)
    for e in edges:
        seg = sliding_window_view(e, SEGMENT, axis=-1)
        hit |= (_std(seg, -1) < IMPAIRED_THRESHOLD).any(axis=-1)
    return hit


def piqe_gray(rgb: np.ndarray) -> np.ndarray:
    """PIQE's input: YIQ luma of RGB in [0, 1] (or a grey image in [0, 1]), scaled so its
    maximum is 255 and rounded."""
    x = np.asarray(rgb, dtype=np.float64)
    if x.ndim == 3 and x.shape[2] == 3:
        x = x @ YIQ_Y
    elif x.ndim != 2:
        raise MetricError(f"PIQE takes an (H, W, 3) RGB or (H, W) grey image, got shape {x.shape}")
    top = float(x.max())
    if top <= 0:
        raise MetricError("PIQE is undefined for an all-black image")
    return np.round(255.0 * (x / top))


def piqe(rgb: np.ndarray) -> float:
    """PIQE of an RGB image in [0, 1] (H, W, 3), or grey (H, W) in [0, 1].

    Lower is better, 0-100 (0-20 excellent, 21-35 good, 36-50 fair, 51-80 poor, 81-100 bad,
    per MATLAB's documentation).  Mean distortion of the spatially active 16x16 blocks of the
    MSCN image, counting noticeable-artifact blocks (a flat 6-px edge segment) by 1 - variance
    and noisy blocks (centre/surround std test) by their variance.
    """
    img = piqe_gray(rgb)
    h, w = img.shape
    if h < BLOCK or w < BLOCK:
        raise MetricError(f"PIQE needs an image of at least {BLOCK}x{BLOCK} px, got {w}x{h}")
    img = _symmetric_pad_end(img, h % BLOCK, w % BLOCK)
    norm, _ = mscn(img, padding="replicate")
    r, c = norm.shape[0] // BLOCK, norm.shape[1] // BLOCK
    grid = norm[: r * BLOCK, : c * BLOCK].reshape(r, BLOCK, c, BLOCK).transpose(0, 2, 1, 3)
    blocks = grid.reshape(r * c, BLOCK, BLOCK)

    var = np.var(blocks.reshape(len(blocks), -1), axis=1, ddof=1)
    active = var > ACTIVITY_THRESHOLD
    sigma = np.sqrt(var)
    csd = _centre_surround_ratio(blocks)
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = np.abs(sigma - csd) / np.maximum(sigma, csd)
    noisy = sigma > 2 * beta
    impaired = _impaired(blocks)
    dist = active * impaired * (1 - var) + active * noisy * var
    return float((dist.sum() + 1.0) / (1.0 + active.sum()) * 100.0)
