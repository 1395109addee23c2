"""Natural-scene-statistics building blocks, ported from the MATLAB reference releases.

NIQE and BRISQUE were defined by their authors' MATLAB code (LIVE, UT Austin), and
published numbers come from it.  Reproducing those numbers needs MATLAB's own
conventions, so this module ports them one by one:

* ``rgb2gray``: MATLAB's ``rgb2gray`` on a uint8 image (its exact NTSC weights, rounded);
* ``imresize``: MATLAB's ``imresize(im, scale)``: bicubic (a = -0.5) with antialiasing,
  mirrored borders, output size ``ceil(scale * size)``;
* ``gaussian_window``: ``fspecial('gaussian', 7, 7/6)``;
* ``mscn``: mean-subtracted contrast-normalised coefficients, ``(I - mu) / (sigma + 1)``,
  with ``imfilter(..., 'replicate')`` (NIQE, PIQE) or ``filter2(..., 'same')`` (zero
  padding; BRISQUE);
* ``fit_ggd`` / ``fit_aggd``: the moment-matching (A)GGD fits on the 0.2:0.001:10 grid.

Images here are 2-D float64 arrays on a 0-255 scale.  Pure numpy/scipy: no torch, no pyiqa.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
from scipy import sparse
from scipy.special import gamma as _gamma

from ..errors import MetricError

# MATLAB rgb2gray: the first row of inv([1 0.956 0.621; 1 -0.272 -0.647; 1 -1.106 1.703]).
RGB2GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] (or uint8) -> uint8, rounding as an 8-bit image file would hold it."""
    if rgb.dtype == np.uint8:
        return rgb
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def rgb2gray(rgb: np.ndarray) -> np.ndarray:
    """MATLAB ``double(rgb2gray(uint8_image))``: (H, W, 3) RGB (uint8, or float in [0, 1]) or
    (H, W) grey -> (H, W) float64 grey levels 0-255 (integers, as MATLAB rounds uint8 output)."""
    u8 = to_uint8(np.asarray(rgb))
    if u8.ndim == 2:
        return u8.astype(np.float64)
    if u8.ndim != 3 or u8.shape[2] != 3:
        raise MetricError(f"expected an (H, W, 3) RGB or (H, W) grey image, got shape {u8.shape}")
    g = u8.astype(np.float64) @ RGB2GRAY
    return np.floor(g + 0.5)  # MATLAB rounds half away from zero; g >= 0


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


@functools.lru_cache(maxsize=32)
def _resize_matrix(in_len: int, out_len: int, scale: float) -> sparse.csr_matrix:
    """MATLAB imresize's ``contributions`` as a sparse (out_len, in_len) matrix."""
    width = 4.0
    if scale < 1:  # antialiasing: stretch the kernel by 1/scale
        width /= scale

        def kernel(x: np.ndarray) -> np.ndarray:
            return scale * _cubic(scale * x)
    else:
        kernel = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(np.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    w = kernel(u[:, None] - idx)
    w /= w.sum(axis=1, keepdims=True)
    # mirror out-of-range indices (MATLAB: aux = [1:n, n:-1:1]); repeated indices add up
    aux = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    cols = aux[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    rows = np.repeat(np.arange(out_len), taps)
    return sparse.csr_matrix((w.ravel(), (rows, cols.ravel())), shape=(out_len, in_len))


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(img, scale)`` for a 2-D double image (bicubic, antialiased when
    shrinking); output ``ceil(scale * H) x ceil(scale * W)``, no rounding or clipping."""
    x = np.asarray(img, dtype=np.float64)
    if x.ndim != 2:
        raise MetricError(f"imresize takes a 2-D image, got shape {x.shape}")
    h, w = x.shape
    rows = _resize_matrix(h, int(np.ceil(scale * h)), float(scale))  # MATLAB resizes rows first
    cols = _resize_matrix(w, int(np.ceil(scale * w)), float(scale))
    return np.ascontiguousarray((cols @ (rows @ x).T).T)


@functools.lru_cache(maxsize=4)
def gaussian_window(size: int = 7, sigma: float = 7.0 / 6.0) -> np.ndarray:
    """1-D factor of MATLAB ``fspecial('gaussian', size, sigma)`` (the 2-D window is its outer
    product, already normalised to sum 1)."""
    r = (size - 1) / 2.0
    x = np.arange(-r, r + 1)
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    g /= g.sum()
    g.setflags(write=False)
    return g


_BORDER = {"replicate": cv2.BORDER_REPLICATE, "zero": cv2.BORDER_CONSTANT}


def _filter(img: np.ndarray, g: np.ndarray, padding: str) -> np.ndarray:
    # The 7x7 window is separable and symmetric, so correlation == convolution and two 1-D
    # passes equal MATLAB's 2-D imfilter/filter2 (to rounding).
    return cv2.sepFilter2D(img, cv2.CV_64F, g, g, borderType=_BORDER[padding])


def _local_range(img: np.ndarray, size: int, padding: str) -> np.ndarray:
    k = np.ones((size, size), np.uint8)
    b = _BORDER[padding]
    lo, hi = float(img.min()), float(img.max())
    if lo >= 0.0 and hi <= 255.0 and np.array_equal(img, np.floor(img)):
        img = img.astype(np.uint8)  # 8-bit grey levels (the usual case): the same range, 8x less to move
    return (cv2.dilate(img, k, borderType=b, borderValue=0.0).astype(np.float64)
            - cv2.erode(img, k, borderType=b, borderValue=0.0))


_FLAT_TOL = 1e-9  # relative grey-level range below which a 7x7 window counts as flat


def mscn(img: np.ndarray, *, padding: str, size: int = 7, sigma: float = 7.0 / 6.0,
         c: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """MSCN coefficients ``(I - mu) / (sigma + c)`` and the local std ``sigma`` (same units as
    ``img``).  ``padding``: 'replicate' (MATLAB imfilter 'replicate') or 'zero' (filter2 'same')."""
    if padding not in ("replicate", "zero"):
        raise MetricError(f"mscn padding must be 'replicate' or 'zero', got {padding!r}")
    img = np.ascontiguousarray(img, dtype=np.float64)
    g = gaussian_window(size, sigma)
    mu = _filter(img, g, padding)
    var = _filter(img * img, g, padding) - mu * mu
    sd = np.sqrt(np.abs(var))
    out = (img - mu) / (sd + c)
    # In a flat neighbourhood I - mu is 0 in exact arithmetic but floating-point noise (~1e-13)
    # in any implementation, MATLAB's included, with a sign set by the summation order.  The
    # AGGD fits count signs, so on images with large flat areas (posterised, clipped) that noise
    # moves BRISQUE by several points.  Use the exact value, 0.
    flat = _local_range(img, size, padding) <= _FLAT_TOL * np.maximum(np.abs(img), 1.0)
    out[flat] = 0.0
    sd[flat] = 0.0
    return out, sd


_GAM = np.arange(200, 10001) / 1000.0  # MATLAB 0.2:0.001:10


@functools.lru_cache(maxsize=1)
def _r_ggd() -> np.ndarray:
    return _gamma(1.0 / _GAM) * _gamma(3.0 / _GAM) / _gamma(2.0 / _GAM) ** 2


@functools.lru_cache(maxsize=1)
def _r_aggd() -> np.ndarray:
    r = _gamma(2.0 / _GAM) ** 2 / (_gamma(1.0 / _GAM) * _gamma(3.0 / _GAM))
    if not np.all(np.diff(r) > 0):  # the nearest-value search below relies on it
        raise MetricError("internal: the AGGD ratio table is not increasing")
    return r


def _nearest_increasing(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of the entry of an increasing ``table`` nearest each ``x``: MATLAB's
    ``[~, i] = min((table - x).^2)`` (first index on ties; NaN -> index 0, as MATLAB's min)."""
    i = np.clip(np.searchsorted(table, x), 1, table.size - 1)
    lo = i - 1
    pick = np.where((x - table[lo]) ** 2 <= (table[i] - x) ** 2, lo, i)
    return np.where(np.isnan(x), 0, pick)


def fit_ggd(vec: np.ndarray) -> tuple[float, float]:
    """BRISQUE's ``estimateggdparam``: (shape alpha, std sigma) of a zero-mean GGD fitted to
    ``vec`` by moment matching on the 0.2:0.001:10 grid."""
    sigma_sq = float(np.mean(vec * vec))
    e = float(np.mean(np.abs(vec)))
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.float64(sigma_sq) / np.float64(e) ** 2
    i = int(np.argmin(np.abs(rho - _r_ggd())))
    return float(_GAM[i]), float(np.sqrt(sigma_sq))


def fit_aggd(vec: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``estimateaggdparam`` of NIQE/BRISQUE, batched over the rows of ``vec`` (N, M):
    (alpha, left std, right std), each (N,).  A row with no negative or no positive value
    gets NaN stds and alpha 0.2, as MATLAB does."""
    v = np.atleast_2d(vec)
    m = v.shape[1]
    neg, pos = np.minimum(v, 0.0), np.maximum(v, 0.0)
    neg_sq, pos_sq = np.einsum("ij,ij->i", neg, neg), np.einsum("ij,ij->i", pos, pos)
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.sqrt(neg_sq / np.count_nonzero(v < 0, axis=1))
        right = np.sqrt(pos_sq / np.count_nonzero(v > 0, axis=1))
        gh = left / right
        rhat = ((pos.sum(1) - neg.sum(1)) / m) ** 2 / ((neg_sq + pos_sq) / m)
        rnorm = rhat * (gh ** 3 + 1) * (gh + 1) / (gh ** 2 + 1) ** 2
    alpha = _GAM[_nearest_increasing(_r_aggd(), rnorm)]
    return alpha, left, right


def shifted_products(x: np.ndarray) -> list[np.ndarray]:
    """``x .* circshift(x, s)`` for MATLAB's shifts [0 1; 1 0; 1 1; -1 1] over the last two
    axes (horizontal, vertical, main- and anti-diagonal neighbour pairs)."""
    return [x * np.roll(x, s, axis=(-2, -1)) for s in ((0, 1), (1, 0), (1, 1), (-1, 1))]
