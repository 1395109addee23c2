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
  target (closed form again), the retoucher's fix for plastic skin.

Both act through a soft skin mask (1 on the skin, feathered to 0 within ~2 ``scale`` px of it),
and both are deterministic: the grain's seed comes from the input's content hash.  Measured
against ground truth (``python benchmarks/bench_transfer.py --fit``), a real photograph's skin
carries more ``hf`` energy than the Lanczos upscale of its x4 downscale: 2.0-3.3 octaves (clean)
and 1.4-5.5 (degraded, medium) at 128 px inputs, 2.4-4.5 and 1.2-6.9 at 256 px; see the README
for what the policy does to ``texture_hr`` and ``lbp_hr``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .images import luminance

MAX_GRAIN = 0.08  # largest grain amplitude (std of the band-limited grain, grey levels of 1)


def hf(y: np.ndarray, s: float) -> np.ndarray:
    return y - cv2.GaussianBlur(y, (0, 0), 0.375 * s)


def mid(y: np.ndarray, s: float) -> np.ndarray:
    return cv2.GaussianBlur(y, (0, 0), 0.375 * s) - cv2.GaussianBlur(y, (0, 0), 0.75 * s)


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
                  seed: int) -> tuple[np.ndarray, dict[str, float]]:
    """``out`` with its skin's ``hf`` energy moved to ``E_hf(ref) * 2**target``; returns the image
    and what was done (``mix``: share of R mixed in; ``grain``: grain amplitude; energies in
    octaves above R before and after).  No skin: ``out`` unchanged."""
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
    if e_o > e_t:  # crunchy: mix R back in (through the soft mask: what that adds to the band, exactly)
        d = hf(soft[:, :, 0] * (y_r - y_o), scale)[skin]
        w = _solve(e_o, float(np.mean(a * d)), float(np.mean(d * d)), e_t, 1.0)
        result = out + w * soft * (ref - out)
        info["mix"] = w
    else:  # waxy: band-limited grain, shaped by the local luminance
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal(y_o.shape).astype(np.float32)
        shape = np.sqrt(np.clip(cv2.GaussianBlur(y_o, (0, 0), 2 * scale), 0.02, 1.0))
        g = hf(noise, scale)
        g /= float(np.std(g[skin])) + 1e-12
        g *= shape / float(np.mean(shape[skin]))
        gs = hf(g * soft[:, :, 0], scale)[skin]  # what the grain adds to the measured band
        amp = _solve(e_o, float(np.mean(a * gs)), float(np.mean(gs * gs)), e_t, MAX_GRAIN)
        result = out + (amp * g * soft[:, :, 0])[:, :, None]
        info["grain"] = amp
    result = np.clip(result, 0.0, 1.0).astype(np.float32)
    info["after"] = math.log2((float(np.mean(hf(luminance(result), scale)[skin] ** 2)) + 1e-12) / e_r)
    return result, info
