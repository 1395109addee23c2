"""NIQE as the authors' MATLAB release computes it (LIVE ``niqe_release``, ``computequality.m``).

Mittal, Soundararajan and Bovik, "Making a Completely Blind Image Quality Analyzer",
IEEE SPL 2013.  Pristine model: the release's ``modelparameters.mat`` (125 pristine
images, 96x96 patches, sharpness threshold 0.75), shipped as ``data/niqe_live.npz``.
This is the reference that pyiqa calls ``niqe`` and basicsr's ``calculate_niqe`` follows;
MATLAB's Image Processing Toolbox ``niqe()`` (pyiqa's ``niqe_matlab``) uses MathWorks'
own model and gives other numbers.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np
from scipy.special import gamma

from ..errors import MetricError
from .nss import fit_aggd, imresize, mscn, shifted_products

BLOCK = 96  # the model's patch size


@functools.lru_cache(maxsize=1)
def pristine_model() -> tuple[np.ndarray, np.ndarray]:
    """(mu (36,), cov (36, 36)) of the pristine multivariate Gaussian (LIVE modelparameters.mat)."""
    with resources.files(__package__).joinpath("data", "niqe_live.npz").open("rb") as f:
        d = np.load(f, allow_pickle=False)
        mu, cov = d["mu"].astype(np.float64), d["cov"].astype(np.float64)
    mu.setflags(write=False)
    cov.setflags(write=False)
    return mu, cov


def block_features(structdis: np.ndarray, block: int) -> np.ndarray:
    """``computefeature.m`` on each ``block`` x ``block`` tile of an MSCN image: (n_blocks, 18).

    Per tile: AGGD (alpha, mean of left/right scale) of the coefficients, then for each of
    the four neighbour products: alpha, AGGD mean, left and right scale."""
    h, w = structdis.shape
    r, c = h // block, w // block
    grid = structdis[: r * block, : c * block].reshape(r, block, c, block).transpose(0, 2, 1, 3)
    tiles = grid.reshape(r * c, block, block)
    flat = tiles.reshape(len(tiles), -1)
    alpha, left, right = fit_aggd(flat)
    k = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    feats = [alpha, (left + right) * k / 2]
    for prod in shifted_products(tiles):  # circshift inside each tile, as blkproc does
        alpha, left, right = fit_aggd(prod.reshape(len(prod), -1))
        k = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
        bl, br = left * k, right * k
        feats += [alpha, (br - bl) * gamma(2 / alpha) / gamma(1 / alpha), bl, br]
    return np.stack(feats, axis=1)


def _pinv(a: np.ndarray) -> np.ndarray:
    """MATLAB ``pinv``: singular values below max(size) * eps(largest) are dropped."""
    u, s, vt = np.linalg.svd(a)
    keep = s > max(a.shape) * np.spacing(s[0])
    return (vt[keep].T / s[keep]) @ u[:, keep].T


def niqe_features(gray: np.ndarray) -> np.ndarray:
    """(n_blocks, 36) NIQE patch features of a grey image (0-255): 18 at full scale, 18 at half."""
    img = np.asarray(gray, dtype=np.float64)
    if img.ndim != 2:
        raise MetricError(f"NIQE takes a 2-D grey image, got shape {img.shape}")
    r, c = img.shape[0] // BLOCK, img.shape[1] // BLOCK
    if r * c < 2:
        raise MetricError(f"NIQE needs at least two {BLOCK}x{BLOCK} blocks; the image is {img.shape[1]}x"
                          f"{img.shape[0]} px. Score a larger image (metrics.iqa_max_side >= 192).")
    img = img[: r * BLOCK, : c * BLOCK]
    feats = []
    for scale in (1, 2):
        structdis, _ = mscn(img, padding="replicate")
        feats.append(block_features(structdis, BLOCK // scale))
        if scale == 1:
            img = imresize(img, 0.5)
    return np.concatenate(feats, axis=1)


def niqe(gray: np.ndarray, *, model: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """NIQE of a grey image (H, W) on a 0-255 scale (MATLAB ``double(rgb2gray(uint8))``).

    Lower is better; about 2-4 for pristine photos, 5-10 for visibly degraded ones, unbounded
    above.  Distance between the MVG fitted to the image's 96x96-patch features and the
    pristine MVG: sqrt((mu_p - mu_d)' pinv((S_p + S_d) / 2) (mu_p - mu_d)).  Images are cropped
    to whole 96 px blocks.  ``model``: (mu, cov); default the LIVE pristine model.
    """
    mu_p, cov_p = pristine_model() if model is None else model
    feats = niqe_features(gray)
    with np.errstate(invalid="ignore"):
        mu_d = np.nanmean(feats, axis=0)  # MATLAB nanmean: per column
    complete = feats[~np.isnan(feats).any(axis=1)]  # MATLAB nancov: complete rows only
    if len(complete) < 2:
        raise MetricError("NIQE: fewer than two image blocks have defined features (is the image flat?)")
    cov_d = np.cov(complete, rowvar=False)
    d = mu_p - mu_d
    return float(np.sqrt(d @ _pinv((cov_p + cov_d) / 2) @ d))
