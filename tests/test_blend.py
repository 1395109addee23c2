from __future__ import annotations

import cv2
import numpy as np
import pytest

from tuner.blend import blend
from tuner.errors import ConfigError

RNG = np.random.default_rng(1)


def _pair():
    sr = RNG.random((64, 64, 3), dtype=np.float32)
    ref = cv2.GaussianBlur(sr, (0, 0), 2)
    return sr, ref


@pytest.mark.parametrize("variant", ["global", "skin", "frequency"])
def test_zero_is_identity(variant):
    sr, ref = _pair()
    skin = np.ones((64, 64), bool)
    assert blend(sr, ref, amount=0.0, variant=variant, skin=skin) is sr


def test_global_is_linear_mix():
    sr, ref = _pair()
    np.testing.assert_allclose(blend(sr, ref, amount=1.0), ref, atol=1e-6)
    np.testing.assert_allclose(blend(sr, ref, amount=0.25), 0.75 * sr + 0.25 * ref, atol=1e-6)


def test_skin_variant_only_acts_inside_mask():
    sr, ref = _pair()
    skin = np.zeros((64, 64), bool)
    skin[16:48, 16:48] = True
    out = blend(sr, ref, amount=1.0, variant="skin", skin=skin, scale=2)
    np.testing.assert_allclose(out[:4], sr[:4], atol=1e-6)  # far from the mask
    assert np.abs(out[30:34, 30:34] - ref[30:34, 30:34]).max() < 0.05


def test_frequency_variant_keeps_low_band():
    sr, ref = _pair()
    out = blend(sr, ref, amount=1.0, variant="frequency", scale=4)
    low = lambda x: cv2.GaussianBlur(x, (0, 0), 6)  # noqa: E731
    assert np.abs(low(out) - low(sr)).mean() < 0.2 * np.abs(out - sr).mean() + 1e-3
    assert np.abs(out - sr).mean() > 0.05  # high band changed


def test_bad_amount():
    sr, ref = _pair()
    with pytest.raises(ConfigError, match="params.blend"):
        blend(sr, ref, amount=1.5)
