"""The texture policy (params.texture_target): a waxy case moves up and a crunchy case moves down
onto the target, on ladders of synthetic inputs made from real portraits; only skin changes; the
same input gives the same bytes; and a pipeline run applies it as a preset records it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import TINY_SRVGG

from tuner import metrics as M
from tuner.dataset import Pairs, load
from tuner.facegeom import skin_mask
from tuner.faces import FaceDetector
from tuner.images import reference_upscale
from tuner.pipeline import Params, Pipeline, PipelineSpec
from tuner.texture import match_texture
from tuner.weights import ModelSpec, WeightStore


@pytest.fixture(scope="module")
def cases():
    """(HR, R, skin, analysis) of three validation portraits: R, a Lanczos upscale of the x4 LR,
    is the waxy end of the ladder; unsharp-masked HRs are the crunchy end."""
    out = []
    for it in load(None, max_side=128, pairs=Pairs(split="val")).items[:3]:
        faces = FaceDetector()(it.image.rgb)
        ref = reference_upscale(it.image.rgb, it.hr.shape[:2])
        out.append((it.hr, ref, skin_mask(ref, [f.scaled(4) for f in faces]),
                    M.InputAnalysis(it.image.rgb, faces, it.hr.shape[:2], hr=it.hr)))
    return out


def _octaves_above_r(img, an):
    return M.score(M.Context(img, an), ["crunch"])["crunch"] / (10 * np.log10(2))


@pytest.mark.parametrize("target", [1.5, 3.0])
def test_waxy_inputs_move_up_and_crunchy_ones_down_onto_the_target(cases, target):
    for hr, ref, skin, an in cases:
        ladder = [ref, np.clip((ref + hr) / 2, 0, 1)]  # waxy: the Lanczos upscale, half-way to the truth
        ladder += [np.clip(hr + a * (hr - cv2.GaussianBlur(hr, (0, 0), 1.5)), 0, 1) for a in (1.0, 2.0)]  # crunchy
        for img in ladder:
            img = img.astype(np.float32)
            before = _octaves_above_r(img, an)
            out, info = match_texture(img, ref, skin, scale=4, target=target, seed=7)
            after = _octaves_above_r(out, an)
            # what the crunch metric measures, within 0.1 octave (clipping at 0 and 1 takes a little grain)
            assert abs(after - target) < 0.1, (before, after, info)
            assert (info["grain"] > 0) == (before < target) and (info["mix"] > 0) == (before > target)
            far = cv2.dilate(skin.astype(np.uint8), np.ones((41, 41), np.uint8)) == 0
            assert np.array_equal(out[far], img[far])  # nothing changes away from the skin


def test_grain_brings_waxy_skin_to_the_truths_texture_and_statistics(cases):
    """On clean pairs at 128 px a Lanczos upscale sits ~2-3 octaves under the real skin; grain at
    the measured level (2.9 octaves above R, the train split's median at that size) lands near the
    truth and its LBP statistics move towards the truth's."""
    for _, ref, skin, an in cases:
        out, _ = match_texture(ref, ref, skin, scale=4, target=2.9, seed=1)
        b = M.score(M.Context(ref, an), ["texture_hr", "lbp_hr"])
        a = M.score(M.Context(out, an), ["texture_hr", "lbp_hr"])
        assert b["texture_hr"] < -1.4 and abs(a["texture_hr"]) < 0.5
        assert a["lbp_hr"] < b["lbp_hr"]


def test_deterministic_and_a_no_op_without_skin(cases):
    hr, ref, skin, _ = cases[0]
    a, _ = match_texture(ref, ref, skin, scale=4, target=2.0, seed=3)
    b, _ = match_texture(ref, ref, skin, scale=4, target=2.0, seed=3)
    c, _ = match_texture(ref, ref, skin, scale=4, target=2.0, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    same, info = match_texture(ref, ref, np.zeros_like(skin), scale=4, target=2.0, seed=3)
    assert same is ref and info == {"mix": 0.0, "grain": 0.0}


def test_the_pipeline_applies_it_per_image(tiny_weights):
    it = load(None, max_side=128, pairs=Pairs(split="val")).items[0]
    model = ModelSpec.from_mapping({"name": "realesr-general-x4v3", "arch": TINY_SRVGG, "key": "params"})
    pipe = Pipeline(PipelineSpec(model=model), store=WeightStore(weights_dir=tiny_weights))
    plain = pipe.run(it.image, Params(blend=1.0))
    policy = pipe.run(it.image, Params(blend=1.0, texture_target=2.5))
    again = pipe.run(it.image, Params(blend=1.0, texture_target=2.5))
    assert policy.texture is not None and policy.texture["grain"] > 0 and abs(policy.texture["after"] - 2.5) < 0.1
    assert not np.array_equal(plain.image.rgb, policy.image.rgb)
    assert np.array_equal(policy.image.rgb, again.image.rgb)  # same bytes every time
    # the random tiny network's output is far crunchier than 1 octave above R: the mix branch
    crunchy = pipe.run(it.image, Params(texture_target=1.0))
    assert crunchy.texture is not None and crunchy.texture["mix"] > 0 and crunchy.texture["grain"] == 0
    assert crunchy.texture["before"] > 2.0 and abs(crunchy.texture["after"] - 1.0) < 0.1
