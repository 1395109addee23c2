"""Skin-texture metrics: crunch (over-sharpening) and wax (over-smoothing).

All are computed on luminance Y inside the skin mask (face ellipse minus eyes, brows and
mouth, intersected with a skin-colour model; see :func:`tuner.facegeom.skin_mask`), at full
output resolution but only on the crop around the skin, and always relative to
R = a Lanczos upscale of the input to the output size.  With upscale factor s, the input's
Nyquist frequency is f_c = 1/(2s) cycles per output pixel: everything above f_c in the
output is synthesized by the model.

Band energies use Gaussian filters G_sigma, whose transfer function is the amplitude
H(f) = exp(-2 pi^2 sigma^2 f^2).  G with sigma = 0.375*s has half *amplitude* (a quarter
of the power) at f_c; with 0.75*s, half amplitude at f_c/2.  The bands are therefore soft:
the high-pass 1 - G_{0.375 s} used by crunch passes amplitude 0.5 at f_c (power 0.25),
0.32 at 0.75 f_c (power 0.10) and 0.16 at f_c/2 (power 0.025), so "energy above the input
Nyquist" means a band centred on f_c with soft skirts, not a brick-wall cut.
(``tests/test_skin_bands.py`` measures these numbers on sinusoids.)

Images without a detected face (or without skin pixels) get NaN and a note "no face".
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..images import luminance
from ..texture import GAP_SCALE, face_gaps, hf, mid
from .context import Context

LBP_POINTS, LBP_RADIUS = 8, 1


def _skin_crops(ctx: Context, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    box = ctx.ref.skin_box
    if box is None or not ctx.ref.skin_out.any():
        ctx.notes[name] = "no face"
        return None
    return ctx.y_out[box], ctx.ref.y_ref[box], ctx.ref.skin_out[box]


# the bands, shared with the texture policy (tuner.texture) so that it hits what these measure
_hf, _mid = hf, mid


def skin_energy(ctx: Context, band, of: str = "output") -> float:  # type: ignore[no-untyped-def]
    """Mean energy of ``band`` (:func:`_hf` or :func:`_mid`) over the skin crop of the output, of R
    (``of="R"``) or of the ground truth (``of="HR"``); computed once per output (crunch, wax,
    texture_excess and the *_hr metrics share it) or once per input.  Call after :func:`_skin_crops`."""
    return float(_energies(ctx, band, of)[0])


def face_energies(ctx: Context, band, of: str = "output") -> dict[int, float]:  # type: ignore[no-untyped-def]
    """:func:`skin_energy` of each face :attr:`InputAnalysis.judged_faces` judges on its own, by label."""
    return _energies(ctx, band, of)[1]


def _energies(ctx: Context, band, of: str) -> tuple[float, dict[int, float]]:  # type: ignore[no-untyped-def]
    memo, key = (ctx.extras, f"e_{band.__name__}") if of == "output" else (ctx.ref.memo, f"e_{band.__name__}_{of}")
    if key not in memo:
        box = ctx.ref.skin_box
        assert box is not None
        if of == "HR":
            assert ctx.ref.hr is not None
            y = luminance(ctx.ref.hr)
        else:
            y = ctx.y_out if of == "output" else ctx.ref.y_ref
        b2 = band(y[box], ctx.ref.scale) ** 2
        faces: dict[int, float] = {}
        if ctx.ref.judged_faces:
            labels = ctx.ref.skin_out_labels[box].ravel()
            n = len(ctx.ref.faces) + 1
            sums = np.bincount(labels, weights=b2.ravel().astype(np.float64), minlength=n)
            counts = np.bincount(labels, minlength=n)
            faces = {i: float(sums[i] / counts[i]) for i in ctx.ref.judged_faces}
        memo[key] = (float(np.mean(b2[ctx.ref.skin_out[box]])), faces)
    return memo[key]  # type: ignore[no-any-return]


def _db(o: float, r: float) -> float:
    return 10.0 * math.log10((o + 1e-10) / (r + 1e-10))


def band_db_faces(ctx: Context, name: str, band) -> list[float]:  # type: ignore[no-untyped-def]
    """10*log10(E_band(O) / E_band(R)) over all the skin, then over each face judged on its own (where
    the image has several: :attr:`InputAnalysis.judged_faces`); [] (noted) without skin."""
    if _skin_crops(ctx, name) is None:
        return []
    o, r = face_energies(ctx, band), face_energies(ctx, band, "R")
    return [_db(skin_energy(ctx, band), skin_energy(ctx, band, "R")), *(_db(o[i], r[i]) for i in o)]


def crunch(ctx: Context) -> float:
    """Crunch index, dB (lower = less over-sharpened; 0 = no more synthesized detail than R).

    10*log10(E_hf(O) / E_hf(R)), where E_hf(X) = mean over skin of (X - G_{0.375 s} X)^2:
    the skin's energy in a soft high band centred on the input Nyquist f_c (half amplitude
    at f_c, see the module docstring), output versus Lanczos.  A faithful SR
    adds some (natural skin has texture there); over-sharpening (unsharp masking, GAN
    crunch) adds much more.  Typical: Lanczos 0 dB, natural HR skin ~ +5..+12 dB.

    With several faces, the crunchiest of all the skin and each face judged on its own
    (:attr:`InputAnalysis.judged_faces`): a guard rail on it holds for every face, as identity's does.
    """
    v = band_db_faces(ctx, "crunch", _hf)
    return max(v) if v else math.nan


def crunch_least(ctx: Context) -> float:
    """crunch of the least crunchy of all the skin and each face judged on its own, dB (= crunch with one face).

    Not a guard rail: what an objective term with a target (crunch's natural 8 dB) reads beside
    ``crunch``, so that on a group photograph a face waxier than the target costs as a crunchier one
    does (:meth:`tuner.objective.Term.value`); ``crunch`` alone is the crunchiest face's.
    """
    v = band_db_faces(ctx, "crunch_least", _hf)
    return min(v) if v else math.nan


def texture_excess(ctx: Context) -> float:
    """Skin texture above what a real photograph would have, octaves (NR; 0 = the prediction, + crunchier).

    ``crunch`` in octaves minus :func:`tuner.texture.predicted_gap` of the input: the no-reference
    counterpart of ``texture_hr``.  A fixed crunch band, calibrated on clean downscales, rejects the
    truth itself on soft, degraded inputs (their real photographs sit 4-7 octaves, 12-20 dB, above a
    Lanczos upscale); this one moves with what the input allows.
    """
    v = _excess_faces(ctx, "texture_excess")
    return max(v) if v else math.nan


def texture_excess_least(ctx: Context) -> float:
    """texture_excess of the least textured face (= texture_excess with one face), as :func:`crunch_least`."""
    v = _excess_faces(ctx, "texture_excess_least")
    return min(v) if v else math.nan


def _excess_faces(ctx: Context, name: str) -> list[float]:
    """texture_excess over all the skin, then over each face judged on its own; [] (noted) where it cannot be read."""
    if abs(ctx.ref.scale - GAP_SCALE) > 0.01:
        ctx.notes[name] = f"the texture predictor is fitted at x{GAP_SCALE}"
        return []
    c = band_db_faces(ctx, name, _hf)
    if not c:
        return []
    memo = ctx.ref.memo
    if "predicted_gaps" not in memo:  # all the skin, then each face judged on its own (as crunch)
        memo["predicted_gaps"] = list(face_gaps(ctx.ref.input, ctx.ref.skin_in_labels, ctx.ref.judged_faces).values())
    return [db / (10.0 * math.log10(2.0)) - gap for db, gap in zip(c, memo["predicted_gaps"], strict=True)]


def crunch_grad(ctx: Context) -> float:
    """Skin gradient overshoot, dB (lower better): 99th percentile of |grad Y| in skin, O versus R.

    Over-sharpened skin has a heavy tail of steep local gradients ("grit").
    """
    c = _skin_crops(ctx, "crunch_grad")
    if c is None:
        return math.nan
    yo, yr, m = c

    def p99(y: np.ndarray) -> float:
        gx = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3)
        return float(np.percentile(np.hypot(gx, gy)[m], 99))

    memo = ctx.ref.memo
    if "p99_ref" not in memo:
        memo["p99_ref"] = p99(yr)
    return 20.0 * math.log10((p99(yo) + 1e-8) / (memo["p99_ref"] + 1e-8))


def wax(ctx: Context) -> float:
    """Wax index, dB (lower = less waxy; > 0 = pore-scale texture weaker than even a Lanczos upscale).

    10*log10(E_mid(R) / E_mid(O)), E_mid(X) = mean over skin of (G_{0.375 s} X - G_{0.75 s} X)^2:
    the pore-scale band f_c/2..f_c (1/16..1/8 cycles/px at x4), which the input still
    carries.  Smoothing (face restorers, heavy denoise, bilateral filters) removes it.  With
    several faces, the waxiest (as :func:`crunch`).
    """
    v = band_db_faces(ctx, "wax", _mid)
    return -min(v) if v else math.nan


def _lbp_codes(y: np.ndarray, m: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Uniform LBP codes (P=8, R=1) at the pore scale, and the mask at that scale: the image is
    sampled after an s/2 box downscale so that radius 1 ~ pore size."""
    from skimage.feature import local_binary_pattern

    k = max(int(round(s / 2)), 1)
    if k > 1:
        h, w = y.shape[0] // k * k, y.shape[1] // k * k
        y = y[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))
        m = m[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3)) > 0.5
    return local_binary_pattern((y * 255).round().astype(np.uint8), LBP_POINTS, LBP_RADIUS, method="uniform"), m


def _lbp_entropy(y: np.ndarray, m: np.ndarray, s: float) -> float:
    codes, m = _lbp_codes(y, m, s)
    if not m.any():
        return math.nan  # no skin pixel left at pore scale: no entropy to speak of
    hist = np.bincount(codes[m].astype(int), minlength=LBP_POINTS + 2).astype(np.float64)
    p = hist / hist.sum()
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def wax_lbp(ctx: Context) -> float:
    """LBP-entropy drop, bits (lower better): H(LBP of R) - H(LBP of O) over skin.

    Uniform rotation-invariant LBP (P=8, R=1) at pore scale; entropy at most log2(10) = 3.32
    bits.  Plastic skin is locally flat, so its LBP histogram collapses onto few codes.
    """
    c = _skin_crops(ctx, "wax_lbp")
    if c is None:
        return math.nan
    yo, yr, m = c
    memo = ctx.ref.memo
    if "lbp_ref" not in memo:
        memo["lbp_ref"] = _lbp_entropy(yr, m, ctx.ref.scale)
    v = memo["lbp_ref"] - _lbp_entropy(yo, m, ctx.ref.scale)
    if math.isnan(v):
        ctx.notes["wax_lbp"] = "skin region too small for LBP at pore scale"
    return v


def _slope(y: np.ndarray, m: np.ndarray) -> float:
    ys, xs = np.nonzero(m)
    cy, cx = int(np.median(ys)), int(np.median(xs))
    n = 2 ** int(math.log2(max(min(y.shape[0], y.shape[1], 256), 16)))
    y0, x0 = max(min(cy - n // 2, y.shape[0] - n), 0), max(min(cx - n // 2, y.shape[1] - n), 0)
    patch = y[y0 : y0 + n, x0 : x0 + n].astype(np.float64)
    patch = (patch - patch.mean()) * np.outer(np.hanning(patch.shape[0]), np.hanning(patch.shape[1]))
    p = np.abs(np.fft.fftshift(np.fft.fft2(patch))) ** 2
    fy, fx = np.indices(p.shape)
    r = np.hypot(fy - p.shape[0] // 2, fx - p.shape[1] // 2).astype(int)
    radial = np.bincount(r.ravel(), p.ravel()) / np.maximum(np.bincount(r.ravel()), 1)
    f = np.arange(radial.size) / patch.shape[0]
    sel = (f >= 2 / patch.shape[0]) & (f <= 0.5) & (radial > 0)
    return float(np.polyfit(np.log10(f[sel]), np.log10(radial[sel]), 1)[0])


def spectral_slope(ctx: Context) -> float:
    """Slope of the radially averaged log power spectrum of skin (log10 P vs log10 f, 2/N..0.5 cycles/px).

    Informational (no direction): natural images are near -2; flatter (less negative)
    than R means added high-frequency texture, steeper means smoothing.  Computed on a
    Hann-windowed square patch (<= 256 px) centred on the skin.
    """
    c = _skin_crops(ctx, "spectral_slope")
    if c is None:
        return math.nan
    yo, _, m = c
    return _slope(yo, m)


def texture_map(y_out: np.ndarray, y_ref: np.ndarray, mask: np.ndarray, scale: float, *,
                band: str = "crunch") -> np.ndarray:
    """Local band energy of the output over R's, dB, per pixel (NaN outside ``mask``), each
    averaged in a Gaussian window of sigma ``2 * scale`` px.  ``band="crunch"``: :func:`crunch`'s
    band (far above the crunch target = crunchy skin); ``"pores"``: :func:`wax`'s band (below 0 =
    pores weaker than a Lanczos upscale: waxy skin)."""
    f = {"crunch": _hf, "pores": _mid}[band]
    sigma = 2.0 * scale
    e_o = cv2.GaussianBlur(f(y_out, scale) ** 2, (0, 0), sigma)
    e_r = cv2.GaussianBlur(f(y_ref, scale) ** 2, (0, 0), sigma)
    out = 10.0 * np.log10((e_o + 1e-10) / (e_r + 1e-10))
    return np.where(mask, out, np.nan).astype(np.float32)
