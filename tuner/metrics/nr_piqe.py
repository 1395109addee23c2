"""PIQE as MATLAB's Image Processing Toolbox ``piqe()`` computes it (clean-room implementation).

Venkatanath N, Praneeth D, Maruthi Chandrasekhar Bh, Sumohana S. Channappayya and Swarup S.
Medasani, "Blind Image Quality Evaluation Using Perception Based Features", NCC 2015
(doi:10.1109/NCC.2015.7084843).  No model, no training: the score is built from 16x16 blocks
of the MSCN coefficients of the grey image.

Score: 0-100, **lower is better** (MATLAB's scale: excellent 0-20, good 21-35, fair 36-50,
poor 51-80, bad 81-100).  An image with no spatially active block scores 100.

Algorithm (paper, MATLAB documentation of ``piqe``):

1. grey image (MATLAB ``rgb2gray`` of the 8-bit image), padded at the bottom/right by
   symmetric reflection to whole 16x16 blocks, rescaled to ``round(255 * I / max(I))``;
2. MSCN coefficients ``(I - mu) / (sigma + 1)``, Gaussian window sigma 7/6 (7x7),
   replicated borders (``imgaussfilt`` defaults);
3. a block is *spatially active* when the (n-1) variance ``v`` of its MSCN coefficients
   exceeds 0.1;
4. *noticeable artifact*: on any of the block's four edges, some run of 6 consecutive
   coefficients (11 per edge) has a standard deviation below 0.1;
5. *noise*: ``sqrt(v) > 2 * beta`` with ``beta = |sqrt(v) - r| / max(sqrt(v), r)`` and ``r``
   the ratio of the standard deviation of the two centre columns to that of the surround;
6. score ``100 * (1 + sum over active blocks of [artifact] (1 - v) + [noise] v) / (1 + N_active)``.

MATLAB quirk reproduced: in step 5 the "surround" is the block less columns 8 and 10
(1-based), not 8 and 9: MATLAB deletes column 8 and then column 9 of the already shortened
block.  The centre is columns 8 and 9.  With the quirk the five calibration images of
tests/test_iqa.py agree with MATLAB's published values to their 2 decimals; without it I04 is
0.27 off.  tuner's ``mscn`` sets the coefficients of flat 7x7 neighbourhoods to exactly 0
where MATLAB leaves ~1e-13 rounding noise; no threshold above (0.1) can see the difference.
The ``max(I)`` rescale of step 1 follows pypiqe; it is a no-op on images that reach white
(grey level 255), so the calibration set (only I03 stops short, at 239, and it has no
active block either way) cannot confirm it.

Sources (no pyiqa code was read or used): the paper; MathWorks' documentation page of
``piqe`` (algorithm steps, 16x16 blocks, quality scale); the MIT-licensed PyPI package
``pypiqe`` 1.2 by Michael W. Rutherford (github.com/michael-rutherford/pypiqe), a Python port
that states it was tested against MATLAB, for the thresholds, padding, rescale and the
centre/surround columns.  pypiqe's grey conversion (OpenCV BGR weights on RGB) is not used;
MATLAB's ``rgb2gray`` is (tuner.metrics.nss).

Implementation: numpy/OpenCV, vectorised over blocks, float64; about 0.05 s for 1024x1024 RGB.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import MetricError
from .nss import mscn, rgb2gray

BLOCK = 16  # block side, px
ACTIVITY_THRESHOLD = 0.1  # MSCN variance above which a block is spatially active
IMPAIRED_THRESHOLD = 0.1  # edge-segment std below which a block shows a noticeable artifact
SEGMENT = 6  # edge-segment length, px
C = 1.0  # stabilising constant of the pooled score

_CENTRE = np.array([7, 8])  # 0-based centre columns of a block
_SURROUND = np.array([c for c in range(BLOCK) if c not in (7, 9)])  # MATLAB's deletion quirk


def _grey(image: np.ndarray) -> np.ndarray:
    """(H, W) float64 grey levels 0-255 (integers) from RGB/grey, uint8 or float in [0, 1]."""
    a = np.asarray(image)
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise MetricError("PIQE: the image has NaN or infinite values")
    return rgb2gray(a)


def _padded(g: np.ndarray) -> np.ndarray:
    """Bottom/right symmetric padding to whole blocks (MATLAB padarray 'symmetric', 'post')."""
    h, w = g.shape
    ph, pw = -h % BLOCK, -w % BLOCK
    if ph or pw:
        g = np.pad(g, ((0, ph), (0, pw)), mode="symmetric")
    return g


def _blocks(x: np.ndarray) -> np.ndarray:
    """(H, W) with H, W multiples of BLOCK -> (n_blocks, BLOCK, BLOCK), row-major block order."""
    h, w = x.shape
    return x.reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK).swapaxes(1, 2).reshape(-1, BLOCK, BLOCK)


def _artifact(blocks: np.ndarray) -> np.ndarray:
    """Noticeable-artifact flag per block: some 6-px run on an edge has std < threshold."""
    edges = np.stack([blocks[:, 0, :], blocks[:, :, -1], blocks[:, -1, :], blocks[:, :, 0]], axis=1)
    runs = sliding_window_view(edges, SEGMENT, axis=2)  # (n, 4 edges, 11 runs, 6)
    return (runs.std(axis=-1, ddof=1) < IMPAIRED_THRESHOLD).any(axis=(1, 2))


def _noise(blocks: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Noise flag per block: centre-surround std ratio against the block std."""
    n = len(blocks)
    centre = blocks[:, :, _CENTRE].reshape(n, -1).std(axis=1, ddof=1)
    surround = blocks[:, :, _SURROUND].reshape(n, -1).std(axis=1, ddof=1)
    sigma = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = centre / surround
        ratio = np.where(np.isnan(ratio), 0.0, ratio)  # 0/0 -> 0, as MATLAB's code
        beta = np.abs(sigma - ratio) / np.maximum(sigma, ratio)
        return sigma > 2.0 * beta  # NaN (inf/inf) compares False


def piqe(image: np.ndarray) -> float:
    """PIQE score of ``image`` (0-100, lower is better), as MATLAB ``piqe``.

    ``image``: (H, W, 3) RGB or (H, W) grey, uint8 or float in [0, 1] (converted to 8 bit and
    to grey with MATLAB ``rgb2gray``).  Raises MetricError when the image is smaller than one
    16x16 block or flat (a single grey level: nothing to measure; MATLAB would return 100).
    """
    g = _grey(image)
    h, w = g.shape
    if h < BLOCK or w < BLOCK:
        raise MetricError(f"PIQE needs an image of at least {BLOCK}x{BLOCK} px; it is {w}x{h}")
    top = g.max()
    if top == g.min():
        raise MetricError("PIQE: the image is flat (a single grey level), nothing to measure")
    g = np.floor(255.0 * (_padded(g) / top) + 0.5)  # MATLAB round (half away from 0); g >= 0
    coeffs, _ = mscn(g, padding="replicate")
    blocks = _blocks(coeffs)
    var = blocks.reshape(len(blocks), -1).var(axis=1, ddof=1)
    active = var > ACTIVITY_THRESHOLD
    if not active.any():
        return 100.0  # (0 + C) / (C + 0) * 100
    blocks, var = blocks[active], var[active]
    distortion = float(np.sum(_artifact(blocks) * (1.0 - var)) + np.sum(_noise(blocks, var) * var))
    return (distortion + C) / (C + len(var)) * 100.0
