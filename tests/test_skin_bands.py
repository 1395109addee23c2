"""The skin metrics' band filters do what their docstrings say (measured on sinusoids),
and the LBP entropy of an empty mask is NaN with a note, not a perfect 0."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuner.metrics import skin


def _amplitude(band, f: float, s: float = 4.0, n: int = 512) -> float:
    """Output / input amplitude of ``band`` for a horizontal sinusoid of f cycles/px."""
    x = np.arange(n, dtype=np.float32)
    y = np.tile(np.sin(2 * np.pi * f * x), (n, 1)).astype(np.float32)
    out = band(y, s)[n // 4 : 3 * n // 4, n // 4 : 3 * n // 4]  # away from the borders
    return float(np.sqrt(2 * np.mean(out**2)))


@pytest.mark.parametrize(("frac", "amp"), [(1.0, 0.50), (0.75, 0.32), (0.5, 0.16)])
def test_crunch_high_pass_is_soft_around_the_input_nyquist(frac, amp):
    s = 4.0
    fc = 1 / (2 * s)
    # 1 - exp(-2 pi^2 sigma^2 f^2) with sigma = 0.375 s: amplitude 0.5 at f_c, as documented
    expected = 1 - math.exp(-2 * math.pi**2 * (0.375 * s) ** 2 * (frac * fc) ** 2)
    got = _amplitude(skin._hf, frac * fc, s)
    assert got == pytest.approx(expected, abs=0.02)
    assert got == pytest.approx(amp, abs=0.03)


def test_lbp_entropy_of_an_empty_mask_is_nan():
    y = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    assert math.isnan(skin._lbp_entropy(y, np.zeros((64, 64), bool), 4.0))
    assert 0 < skin._lbp_entropy(y, np.ones((64, 64), bool), 4.0) <= math.log2(10) + 1e-9
