"""Skin texture bands, and the texture policy that puts an output's skin texture on a target.

The bands (shared with the skin metrics, so the policy hits exactly what they measure): with
upscale factor s, ``hf`` is ``Y - G_{0.375 s} Y`` (a soft band centred on the input's Nyquist
frequency f_c, :func:`tuner.metrics.skin.crunch`'s) and ``mid`` is
``G_{0.375 s} Y - G_{0.75 s} Y`` (the pore band f_c/2..f_c, :func:`tuner.metrics.skin.wax`'s).

:func:`match_texture` (``params.texture_target``, in octaves above a Lanczos upscale R): on the
skin only, it moves the output's energy in the ``hf`` band to ``E_hf(R) * 2**target`` --

- too much (crunchy): mix R back in, ``O + w (R - O)`` on skin, with the ``w`` in [0, 1] that
  lands on the target (closed form: the band energy is quadratic in ``w``);
- too little (waxy: even the SR output is flatter than the target, as on every clean input
  measured): add seeded grain -- Gaussian noise, band-limited to the ``hf`` band, modulated by
  the local luminance (darker skin shows less grain) -- with the amplitude that lands on the
  target (closed form again; refitted on the result, a few steps, where clipping to [0, 1] takes
  some grain back), the retoucher's fix for plastic skin;
- too little, with a sharper second source (``sharp``, another model's output): its skin first,
  as much as lands on the target (closed form), then grain for what it lacks.  Measured on the
  held-out pairs, x4plus's skin adds little over grain alone (README, "Two sources per image"), so
  the pipeline runs one model and passes none; ``benchmarks/bench_transfer.py`` scores it.

All act through a soft skin mask (1 on the skin, feathered to 0 within ~2 ``scale`` px of it),
and both are deterministic: the grain's seed comes from the input's content hash.  Measured
against ground truth (``python benchmarks/bench_transfer.py --fit``), a real photograph's skin
carries more ``hf`` energy than the Lanczos upscale of its x4 downscale: 2.0-3.3 octaves (clean)
and 1.4-5.5 (degraded, medium) at 128 px inputs, 2.4-4.5 and 1.7-6.9 at 256 px (train split); see the README
for what the policy does to ``texture_hr`` and ``lbp_hr``.

Where the target is anchored (``params.texture_anchor``): ``lanczos`` -- ``target`` octaves above
R, the same for every image; ``predicted`` -- ``target`` octaves above the *predicted* texture
of a real photograph, :func:`predicted_gap`, a no-reference estimate from the input alone (so
``target`` 0 aims at the truth itself, and each image gets its own level).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import cv2
import numpy as np

from .images import luminance

ANCHORS = ("lanczos", "predicted")  # params.texture_anchor
MAX_GRAIN = 0.08  # largest grain amplitude (std of the band-limited grain, grey levels of 1)
CLIP_STEPS = 3  # refits of the grain amplitude where clipping to [0, 1] takes some of it back


def hf(y: np.ndarray, s: float) -> np.ndarray:
    return y - cv2.GaussianBlur(y, (0, 0), 0.375 * s)


def mid(y: np.ndarray, s: float) -> np.ndarray:
    return cv2.GaussianBlur(y, (0, 0), 0.375 * s) - cv2.GaussianBlur(y, (0, 0), 0.75 * s)


# The no-reference predictor: a real photograph's skin texture (crunch's band at x4) above a
# Lanczos upscale of its x4 downscale, in octaves, linear in three features of the input's skin
# (:func:`input_features`).  Fitted by least squares on the train split of the bundled pairs (every
# degradation level, LR max side 128 and 256; `python benchmarks/bench_transfer.py --fit` refits
# and prints these numbers and the validation error).  Fitted at x4 only.
GAP_FIT = {"intercept": 16.03, "s01": 2.21, "s12": -1.22, "noise": -0.74}
GAP_FALLBACK = 3.06  # the train split's median gap (every level, both sizes), for skin too small to read
GAP_RANGE = (0.3, 6.9)  # the truth's range on the train split (0.37..6.85; every level, 128 and 256 px): predictions are clipped to it
GAP_SCALE = 4  # the upscale factor it was fitted at
MIN_SKIN_PX = 50
PREDICTOR = {"fit": GAP_FIT, "range": GAP_RANGE, "fallback": GAP_FALLBACK, "min_skin_px": MIN_SKIN_PX}  # all it is


def judged_faces(labels: np.ndarray, n_faces: int, scale: float) -> list[int]:
    """Labels (1-based, as :func:`tuner.facegeom.skin_labels`) of the faces judged on their own where an
    image has several: those whose skin (``labels``, at ``scale`` x the input) covers at least
    :data:`MIN_SKIN_PX` input pixels, the least the predictor reads.  [] with one face or none."""
    if n_faces < 2:
        return []
    counts = np.bincount(labels.ravel(), minlength=n_faces + 1)
    return [i for i in range(1, n_faces + 1) if counts[i] >= MIN_SKIN_PX * scale**2]


def input_features(lr: np.ndarray, skin: np.ndarray) -> dict[str, float] | None:
    """What the predictor reads from the input (LR, RGB) over its skin mask: the slope of the skin's
    spectrum over its top two octaves (``s01``: log2 energy ratio of the band at the input's Nyquist
    frequency over the band an octave down; ``s12``: the next octave down) and the input's noise
    (``noise``: log2 of Immerkaer's (1996) estimate of the noise sigma, grey levels of 255, + 0.1).
    None where the skin has under :data:`MIN_SKIN_PX` pixels."""
    if int(skin.sum()) < MIN_SKIN_PX:
        return None
    y = luminance(lr)  # the input's own top three octaves: the policy's bands at scale 1 and 2
    e = [float(np.mean(b[skin] ** 2)) + 1e-12 for b in (hf(y, 1), mid(y, 1), mid(y, 2))]
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    lap = cv2.filter2D(y, -1, k)[1:-1, 1:-1]
    sigma = math.sqrt(math.pi / 2) * float(np.mean(np.abs(lap))) / 6 * 255
    return {"s01": math.log2(e[0] / e[1]), "s12": math.log2(e[1] / e[2]), "noise": math.log2(sigma + 0.1)}


def predicted_gap(lr: np.ndarray, skin: np.ndarray) -> float:
    """A real photograph's skin texture above a Lanczos upscale at x4, octaves, predicted from the
    input ``lr`` and its skin mask alone (:data:`GAP_FIT`), clipped to :data:`GAP_RANGE` (a flat,
    noiseless skin would otherwise extrapolate to ~18 octaves); :data:`GAP_FALLBACK` where the skin
    is too small to read."""
    f = input_features(lr, skin)
    if f is None:
        return GAP_FALLBACK
    gap = GAP_FIT["intercept"] + sum(GAP_FIT[k] * v for k, v in f.items())
    return float(min(max(gap, GAP_RANGE[0]), GAP_RANGE[1]))


def face_gaps(lr: np.ndarray, labels: np.ndarray, faces: Iterable[int]) -> dict[int, float]:
    """:func:`predicted_gap` over all the skin (key 0) and over each face of ``faces`` (its label in
    ``labels``, :func:`tuner.facegeom.skin_labels` of ``lr``): the policy's anchors and texture_excess's."""
    return {0: predicted_gap(lr, labels > 0), **{i: predicted_gap(lr, labels == i) for i in faces}}


def _solve(a: float, b: float, c: float, target: float, hi: float) -> float:
    """The smallest x in [0, hi] with E(x) = a + 2 b x + c x^2 = target (a band energy, quadratic
    in the mixing weight or grain amplitude); where no x reaches it, the x of [0, hi] whose E(x)
    is nearest to it."""
    def e(x: float) -> float:
        return a + 2 * b * x + c * x * x

    roots: list[float] = []
    if c > 0:
        disc = b * b - c * (a - target)
        if disc >= 0:
            roots = [(-b - math.sqrt(disc)) / c, (-b + math.sqrt(disc)) / c]
    inside = sorted(x for x in roots if 0.0 <= x <= hi)
    if inside:
        return float(inside[0])
    candidates = [0.0, hi] + ([min(max(-b / c, 0.0), hi)] if c > 0 else [])
    return float(min(candidates, key=lambda x: abs(e(x) - target)))


def match_texture(out: np.ndarray, ref: np.ndarray, skin: np.ndarray, *, scale: float, target: float,
                  seed: int, sharp: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """``out`` with its skin's ``hf`` energy moved to ``E_hf(ref) * 2**target``; returns the image
    and what was done (``mix``: share of R mixed in; ``sharp``: share of ``sharp`` mixed in, where
    given and the skin is waxy; ``grain``: grain amplitude; energies in octaves above R before and
    after).  No skin: ``out`` unchanged."""
    if not skin.any():
        return out, {"mix": 0.0, "grain": 0.0}
    y_o, y_r = luminance(out), luminance(ref)
    a, r = hf(y_o, scale)[skin], hf(y_r, scale)[skin]
    e_r = float(np.mean(r * r)) + 1e-12
    e_t = e_r * 2.0**target
    e_o = float(np.mean(a * a))
    # 1 on every skin pixel, feathered to 0 over ~2 scale px outside it: the skin can be fully replaced
    grown = cv2.dilate(skin.astype(np.uint8), np.ones((2 * int(scale) + 1,) * 2, np.uint8)).astype(np.float32)
    soft = np.maximum(cv2.GaussianBlur(grown, (0, 0), max(scale / 2, 1.0)), skin)[:, :, None]
    info = {"before": math.log2((e_o + 1e-12) / e_r), "mix": 0.0, "grain": 0.0}

    given = (y_o, a, e_o)  # ``out``'s luminance, band and energy: what toward mixes from (the waxy branch rebinds the names)

    def toward(src: np.ndarray, y_src: np.ndarray) -> tuple[np.ndarray, float]:
        """``out`` mixed towards ``src`` on the skin (through the soft mask: what that adds to the band,
        exactly), with the share in [0, 1] that lands nearest the target."""
        y_0, a_0, e_0 = given
        d = hf(soft[:, :, 0] * (y_src - y_0), scale)[skin]
        w = _solve(e_0, float(np.mean(a_0 * d)), float(np.mean(d * d)), e_t, 1.0)
        return out + w * soft * (src - out), w

    if e_o > e_t:  # crunchy: mix R back in
        result, info["mix"] = toward(ref, y_r)
    else:  # waxy: a sharper source's skin first (when given), then band-limited grain for what is left
        result, reached = out, False
        if sharp is not None:
            result, w = toward(sharp, luminance(sharp))
            y_o = luminance(result)
            a = hf(y_o, scale)[skin]
            e_o = float(np.mean(a * a))
            info["sharp"] = w
            reached = e_o >= e_t * (1 - 1e-4)  # on the target, to rounding: no grain
        if not reached:
            rng = np.random.default_rng(seed)
            noise = rng.standard_normal(y_o.shape).astype(np.float32)
            shape = np.sqrt(np.clip(cv2.GaussianBlur(y_o, (0, 0), 2 * scale), 0.02, 1.0))
            g = hf(noise, scale)
            g /= float(np.std(g[skin])) + 1e-12
            g *= shape / float(np.mean(shape[skin]))
            gs = hf(g * soft[:, :, 0], scale)[skin]  # what the grain adds to the measured band
            b, c = float(np.mean(a * gs)), float(np.mean(gs * gs))
            amp = _solve(e_o, b, c, e_t, MAX_GRAIN)
            base, result = result, np.empty_like(result)

            def grained(x: float) -> np.ndarray:  # base + grain, clipped, into one buffer (no copy per step)
                np.add(base, (x * g * soft[:, :, 0])[:, :, None], out=result)
                return np.clip(result, 0.0, 1.0, out=result)

            grained(amp)
            # Clipping to [0, 1] takes grain back where the skin is near black or white (blown highlights),
            # landing short of the target (0.18 octave on A15): refit the grain's share of the band on the
            # clipped result and solve again, a few steps, none where the clip costs under 0.01 octave
            for _ in range(CLIP_STEPS):
                if not 0 < amp < MAX_GRAIN:
                    break
                e = _band_energy(result, skin, scale)
                c = (e - e_o - 2 * b * amp) / amp**2
                if abs(math.log2((e + 1e-12) / e_t)) < 0.01 or c <= 0:
                    break
                amp = _solve(e_o, b, c, e_t, MAX_GRAIN)
                grained(amp)
            info["grain"] = amp
    result = np.clip(result, 0.0, 1.0).astype(np.float32)
    info["after"] = math.log2((_band_energy(result, skin, scale) + 1e-12) / e_r)
    return result, info


def _band_energy(rgb: np.ndarray, skin: np.ndarray, scale: float) -> float:
    return float(np.mean(hf(luminance(rgb), scale)[skin] ** 2))
