"""Full-reference metrics against the ground truth: calibration ladders on real portraits
(blur and unsharp-mask ladders against the HR), and NaN with a note where no truth exists."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from tuner import metrics as M
from tuner.dataset import Pairs, load
from tuner.faces import FaceDetector
from tuner.images import reference_upscale

FR = ["texture_hr", "pores_hr", "lbp_hr", "ssim_hr", "haarpsi_hr"]


@pytest.fixture(scope="module")
def pairs():
    ds = load(None, max_side=128, pairs=Pairs(split="val"))
    out = []
    for it in ds.items[:3]:
        assert it.hr is not None
        out.append((it.hr, M.InputAnalysis(it.image.rgb, FaceDetector()(it.image.rgb), it.hr.shape[:2], hr=it.hr)))
    return out


def _blur(x, s):
    return np.clip(cv2.GaussianBlur(x, (0, 0), s), 0, 1).astype(np.float32)


def _usm(x, a):
    return np.clip(x + a * (x - cv2.GaussianBlur(x, (0, 0), 1.5)), 0, 1).astype(np.float32)


def test_the_truth_scores_as_the_truth(pairs):
    for hr, an in pairs:
        v = M.score(M.Context(hr, an), FR)
        assert v == pytest.approx({"texture_hr": 0.0, "pores_hr": 0.0, "lbp_hr": 0.0, "ssim_hr": 1.0,
                                   "haarpsi_hr": 1.0}, abs=1e-5), v  # HaarPSI in float32


def test_ladders_against_the_truth(pairs):
    for hr, an in pairs:
        blur = [M.score(M.Context(_blur(hr, s), an), FR) for s in (0.6, 1.2, 2.4)]
        usm = [M.score(M.Context(_usm(hr, a), an), FR) for a in (0.5, 1.0, 2.0)]
        for metric in ("texture_hr", "pores_hr"):  # octaves: down with blur, up with sharpening
            assert 0 > blur[0][metric] > blur[1][metric] > blur[2][metric]
            assert 0 < usm[0][metric] < usm[1][metric] < usm[2][metric]
        assert blur[2]["texture_hr"] < -2.5 and usm[1]["texture_hr"] > 1.0  # large, not marginal, moves
        # statistics distance and perceptual scores: worse both ways
        assert 0 < blur[0]["lbp_hr"] < blur[1]["lbp_hr"] < blur[2]["lbp_hr"]
        assert 0 < usm[0]["lbp_hr"] < usm[1]["lbp_hr"] < usm[2]["lbp_hr"]
        for metric in ("ssim_hr", "haarpsi_hr"):
            assert 1 > blur[0][metric] > blur[1][metric] > blur[2][metric]
            assert usm[0][metric] > usm[2][metric]
        # a Lanczos upscale of the LR lacks the truth's fine texture, as every SR output the issue measured
        lanczos = M.score(M.Context(reference_upscale(an.input, hr.shape[:2]), an), ["texture_hr"])
        assert lanczos["texture_hr"] < -1.5


def test_no_truth_is_nan_with_a_note(pairs):
    hr, an = pairs[0]
    bare = M.InputAnalysis(an.input, an.faces, an.out_hw)
    ctx = M.Context(hr, bare)
    v = M.score(ctx, FR)
    assert all(math.isnan(x) for x in v.values()) and all(ctx.notes[n] == "no ground truth" for n in FR)


def test_the_metric_cache_key_includes_the_truth(pairs):
    from tuner.scoring import metric_key

    hr, an = pairs[0]
    other = M.InputAnalysis(an.input, an.faces, an.out_hw, hr=_blur(hr, 1.0))
    kw = dict(tile=0, face_mask=None, iqa_max_side=1024, detector="retinaface", detection_threshold=0.9)
    assert metric_key(hr, an, FR, **kw) != metric_key(hr, other, FR, **kw)
