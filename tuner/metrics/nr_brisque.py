"""BRISQUE as the authors' MATLAB release computes it (LIVE ``BRISQUE_release``,
``brisquescore.m`` + ``brisque_feature.m`` + libsvm ``svm-scale``/``svm-predict``).

Mittal, Moorthy and Bovik, "No-Reference Image Quality Assessment in the Spatial Domain",
IEEE TIP 2012.  Model: the release's ``allmodel`` (an epsilon-SVR with an RBF kernel
trained on the whole LIVE IQA database) and ``allrange`` (feature scaling), shipped as
``data/brisque_live.npz``; the SVR is evaluated here in numpy.  This is the reference
that pyiqa calls ``brisque``; MATLAB's Image Processing Toolbox ``brisque()`` (pyiqa's
``brisque_matlab``) uses MathWorks' own model and gives other numbers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import numpy as np
from scipy.special import gamma

from ..errors import MetricError
from .nss import fit_aggd, fit_ggd, imresize, mscn, shifted_products


@dataclass(frozen=True)
class SVR:
    """A libsvm epsilon-SVR with RBF kernel: f(x) = sum_i coef_i exp(-gamma |x - sv_i|^2) - rho,
    applied to features scaled by svm-scale to [lower, upper] from per-feature (min, max)."""

    sv: np.ndarray  # (n_sv, n_features)
    coef: np.ndarray  # (n_sv,)
    gamma: float
    rho: float
    feature_range: np.ndarray  # (n_features, 2): min, max
    lower: float = -1.0
    upper: float = 1.0

    def scale(self, feats: np.ndarray) -> np.ndarray:
        """``svm-scale -r allrange``: linear map of each feature's [min, max] to [lower, upper],
        printed with %g (6 significant digits), as svm-predict then reads it."""
        lo, hi = self.feature_range[:, 0], self.feature_range[:, 1]
        x = self.lower + (self.upper - self.lower) * (feats - lo) / (hi - lo)
        x = np.where(feats == lo, self.lower, np.where(feats == hi, self.upper, x))
        return np.array([float(f"{v:g}") for v in x])

    def predict(self, scaled: np.ndarray) -> float:
        d2 = ((self.sv - scaled[None, :]) ** 2).sum(axis=1)
        return float(self.coef @ np.exp(-self.gamma * d2) - self.rho)


@functools.lru_cache(maxsize=1)
def live_model() -> SVR:
    """The LIVE release's BRISQUE SVR (allmodel + allrange)."""
    with resources.files(__package__).joinpath("data", "brisque_live.npz").open("rb") as f:
        d = np.load(f, allow_pickle=False)
        lower, upper = (float(v) for v in d["scale_bounds"])
        return SVR(sv=d["sv"].astype(np.float64), coef=d["coef"].astype(np.float64), gamma=float(d["gamma"]),
                   rho=float(d["rho"]), feature_range=d["feature_range"].astype(np.float64),
                   lower=lower, upper=upper)


def brisque_features(gray: np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features of a grey image (0-255), ``brisque_feature.m``: per scale (full,
    half) the GGD (alpha, sigma^2) of the MSCN coefficients, then for each of the four
    neighbour products the AGGD (alpha, mean, left sigma^2, right sigma^2)."""
    img = np.asarray(gray, dtype=np.float64)
    if img.ndim != 2 or min(img.shape) < 8:
        raise MetricError(f"BRISQUE takes a 2-D grey image of at least 8x8 px, got shape {img.shape}")
    feats: list[float] = []
    for scale in (1, 2):
        structdis, _ = mscn(img, padding="zero")  # filter2(window, im, 'same')
        alpha, sd = fit_ggd(structdis.ravel())
        feats += [alpha, sd * sd]
        for prod in shifted_products(structdis):  # circshift over the whole image
            aa, ll, rr = fit_aggd(prod.reshape(1, -1))
            a, left, right = float(aa[0]), float(ll[0]), float(rr[0])
            mean = float((right - left) * gamma(2 / a) / gamma(1 / a) * np.sqrt(gamma(1 / a) / gamma(3 / a)))
            feats += [a, mean, left * left, right * right]
        if scale == 1:
            img = imresize(img, 0.5)
    return np.array(feats)


def brisque(gray: np.ndarray, *, model: SVR | None = None) -> float:
    """BRISQUE of a grey image (H, W) on a 0-255 scale (MATLAB ``double(rgb2gray(uint8))``).

    Lower is better; about 0-100 (0 pristine, 100 worst on LIVE's DMOS scale), slightly
    outside that range at the extremes.  ``model``: default the LIVE release's SVR.
    """
    svr = live_model() if model is None else model
    feats = brisque_features(gray)
    if not np.all(np.isfinite(feats)):
        raise MetricError("BRISQUE features are undefined for this image (is it flat?)")
    # brisquescore.m writes the features with fprintf('%f') before svm-scale reads them
    feats = np.array([float(f"{v:f}") for v in feats])
    return svr.predict(svr.scale(feats))
