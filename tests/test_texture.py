"""The texture policy (params.texture_target): a waxy case moves up and a crunchy case moves down
onto the target, on ladders of synthetic inputs made from real portraits; only skin changes; the
same input gives the same bytes; and a pipeline run applies it as a preset records it.  The
no-reference predictor of a real photograph's texture (``texture_anchor=predicted``) is checked
against the truth: the bundled portraits' HRs."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from conftest import TINY_SRVGG

from tuner import metrics as M
from tuner.dataset import Pairs, load
from tuner.errors import ConfigError
from tuner.facegeom import skin_mask
from tuner.faces import FaceDetector
from tuner.images import reference_upscale
from tuner.pipeline import Params, Pipeline, PipelineSpec
from tuner.texture import GAP_FALLBACK, GAP_FIT, GAP_RANGE, input_features, match_texture, predicted_gap
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
            # what the crunch metric measures, within 0.02 octave (the grain refitted where clipping takes some)
            assert abs(after - target) < 0.02, (before, after, info)
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


def test_a_sharper_source_fills_waxy_skin_before_grain_and_grain_only_tops_it_up(cases):
    """``sharp=`` (a second, sharper source): a waxy output takes the sharp source's skin first, as much
    as lands on the target, and grain only covers what the sharp source lacks; a crunchy output
    ignores it (R is mixed in as before)."""
    for hr, ref, skin, an in cases:
        half = np.clip((ref + hr) / 2, 0, 1).astype(np.float32)
        below_half = _octaves_above_r(half, an) - 0.5
        out, info = match_texture(ref, ref, skin, scale=4, target=below_half, seed=7, sharp=half)
        assert abs(_octaves_above_r(out, an) - below_half) < 0.1 and 0 < info["sharp"] < 1 and info["grain"] == 0
        above = _octaves_above_r(hr, an) + 0.5  # more than the sharp source has: all of it, then grain
        out, info = match_texture(ref, ref, skin, scale=4, target=above, seed=7, sharp=hr.astype(np.float32))
        _, alone = match_texture(ref, ref, skin, scale=4, target=above, seed=7)
        assert abs(_octaves_above_r(out, an) - above) < 0.1 and info["sharp"] == 1.0
        assert 0 < info["grain"] < alone["grain"]
        far = cv2.dilate(skin.astype(np.uint8), np.ones((41, 41), np.uint8)) == 0
        assert np.array_equal(out[far], ref[far])  # the sharp source reaches no further than the skin
        crunchy = np.clip(hr + 2.0 * (hr - cv2.GaussianBlur(hr, (0, 0), 1.5)), 0, 1).astype(np.float32)
        out, info = match_texture(crunchy, ref, skin, scale=4, target=1.5, seed=7, sharp=hr.astype(np.float32))
        without, _ = match_texture(crunchy, ref, skin, scale=4, target=1.5, seed=7)
        assert np.array_equal(out, without) and "sharp" not in info and info["mix"] > 0


def test_deterministic_and_a_no_op_without_skin(cases):
    hr, ref, skin, _ = cases[0]
    a, _ = match_texture(ref, ref, skin, scale=4, target=2.0, seed=3)
    b, _ = match_texture(ref, ref, skin, scale=4, target=2.0, seed=3)
    c, _ = match_texture(ref, ref, skin, scale=4, target=2.0, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    same, info = match_texture(ref, ref, np.zeros_like(skin), scale=4, target=2.0, seed=3)
    assert same is ref and info == {"mix": 0.0, "grain": 0.0}


def test_grain_lands_on_the_target_where_clipping_takes_some_back(cases, monkeypatch):
    """Blown highlights: skin pushed towards white, so that grain clips at 1.  The amplitude the closed
    form gives lands short of the target (as on A15, 0.18 octave); refitted on the clipped result it
    lands on it, and the output stays in [0, 1]."""
    import tuner.texture as T

    for _, ref, skin, _ in cases:
        bright = np.clip(ref + 0.4, 0, 1).astype(np.float32)  # overexposed: up to 15 % of the skin clipped white
        out, info = match_texture(bright, bright, skin, scale=4, target=4.0, seed=7)
        assert 0 < info["grain"] < T.MAX_GRAIN and abs(info["after"] - 4.0) < 0.01, info
        assert out.min() >= 0 and out.max() <= 1

        def band(rgb, skin=skin):  # crunch's band written out here (not the policy's own report): Y - G_{1.5} Y
            y = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).astype(np.float32)
            return float(np.mean((y - cv2.GaussianBlur(y, (0, 0), 0.375 * 4))[skin] ** 2))

        assert abs(np.log2(band(out) / band(bright)) - 4.0) < 0.02
        monkeypatch.setattr(T, "CLIP_STEPS", 0)
        _, closed_form = match_texture(bright, bright, skin, scale=4, target=4.0, seed=7)
        monkeypatch.undo()
        assert closed_form["after"] < 4.0 - 0.1 and closed_form["grain"] < info["grain"], closed_form


def test_the_pipeline_applies_it_per_image(tiny_weights):
    it = load(None, max_side=128, pairs=Pairs(split="val")).items[0]
    model = ModelSpec.from_mapping({"name": "realesr-general-x4v3", "arch": TINY_SRVGG, "key": "params"})
    pipe = Pipeline(PipelineSpec(model=model), store=WeightStore(weights_dir=tiny_weights))
    plain = pipe.run(it.image, Params(blend=1.0))
    policy = pipe.run(it.image, Params(blend=1.0, texture_target=2.5))
    again = pipe.run(it.image, Params(blend=1.0, texture_target=2.5))
    assert policy.texture is not None and [t["face"] for t in policy.texture] == [0]  # one face: one region
    assert policy.texture[0]["grain"] > 0 and abs(policy.texture[0]["after"] - 2.5) < 0.1
    assert not np.array_equal(plain.image.rgb, policy.image.rgb)
    assert np.array_equal(policy.image.rgb, again.image.rgb)  # same bytes every time
    # the random tiny network's output is far crunchier than 1 octave above R: the mix branch
    crunchy = pipe.run(it.image, Params(texture_target=1.0))
    assert crunchy.texture is not None and crunchy.texture[0]["mix"] > 0 and crunchy.texture[0]["grain"] == 0
    assert crunchy.texture[0]["before"] > 2.0 and abs(crunchy.texture[0]["after"] - 1.0) < 0.1


def test_the_predicted_anchor_is_the_lanczos_target_plus_the_per_image_prediction(tiny_weights):
    it = load(None, max_side=128, pairs=Pairs(split="val", degradation="medium")).items[0]
    model = ModelSpec.from_mapping({"name": "realesr-general-x4v3", "arch": TINY_SRVGG, "key": "params"})
    pipe = Pipeline(PipelineSpec(model=model), store=WeightStore(weights_dir=tiny_weights))
    pred = pipe.run(it.image, Params(blend=1.0, texture_target=-0.5, texture_anchor="predicted"))
    gap = predicted_gap(it.image.rgb, skin_mask(it.image.rgb, pred.faces))
    assert pred.texture is not None and pred.texture[0]["predicted_gap"] == gap and gap != GAP_FALLBACK
    fixed = pipe.run(it.image, Params(blend=1.0, texture_target=gap - 0.5))
    assert np.array_equal(pred.image.rgb, fixed.image.rgb)
    assert abs(pred.texture[0]["after"] - (gap - 0.5)) < 0.1


def test_with_several_faces_each_face_lands_on_its_own_target(tiny_weights):
    """Two copies of one LR side by side, the second blurred (so its predicted real texture differs):
    the predicted-anchor policy puts each face's skin on its own prediction plus the offset, which
    one target for the pooled skin could not (it would leave one face above and one below)."""
    from tuner.facegeom import skin_labels
    from tuner.images import Image
    from tuner.texture import hf

    it = load(None, max_side=128, pairs=Pairs(split="val")).items[1]
    lr = it.image.rgb
    soft = cv2.GaussianBlur(lr, (0, 0), 0.8)
    two = Image(rgb=np.concatenate([lr, soft], axis=1))
    model = ModelSpec.from_mapping({"name": "realesr-general-x4v3", "arch": TINY_SRVGG, "key": "params"})
    pipe = Pipeline(PipelineSpec(model=model), store=WeightStore(weights_dir=tiny_weights))
    res = pipe.run(two, Params(blend=1.0, texture_target=-0.5, texture_anchor="predicted"))
    assert len(res.faces) == 2 and res.texture is not None and [t["face"] for t in res.texture] == [1, 2]
    labels = skin_labels(res.reference, [f.scaled(4) for f in res.faces])
    y_o, y_r = (cv2.cvtColor(a, cv2.COLOR_RGB2GRAY) for a in (res.image.rgb, res.reference))
    gaps = []
    for face in (1, 2):
        m = labels == face
        landed = math.log2(float(np.mean(hf(y_o, 4)[m] ** 2)) / float(np.mean(hf(y_r, 4)[m] ** 2)))
        gaps.append(predicted_gap(two.rgb, skin_labels(two.rgb, res.faces) == face))  # not the pipeline's memo
        assert abs(landed - (gaps[-1] - 0.5)) < 0.1, (face, landed, gaps)
    assert abs(gaps[0] - gaps[1]) > 0.3  # two different targets, each met
    again = pipe.run(two, Params(blend=1.0, texture_target=-0.5, texture_anchor="predicted"))
    assert np.array_equal(res.image.rgb, again.image.rgb)
    # a second source (bench_transfer's two-source row): each face takes a share of its own crop of it and
    # lands on its own target with no grain, where the source has more than the target needs
    from tuner.hashing import array_hash

    base = pipe.run(two, Params(blend=1.0))
    rng = np.random.default_rng(0)
    sharp = np.clip(base.image.rgb + 0.15 * hf(rng.standard_normal(y_r.shape).astype(np.float32), 4)[:, :, None], 0, 1)
    out, infos = pipe.texture(base.image.rgb, base.reference, labels, two, array_hash(two.rgb), res.faces, 4,
                              Params(blend=1.0, texture_target=-0.5, texture_anchor="predicted"), sharp=sharp)
    y_s = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
    for face, info in zip((1, 2), infos, strict=True):
        m = labels == face
        landed = math.log2(float(np.mean(hf(y_s, 4)[m] ** 2)) / float(np.mean(hf(y_r, 4)[m] ** 2)))
        assert info["face"] == face and 0 < info["sharp"] < 1 and info["grain"] == 0, info
        assert abs(landed - (gaps[face - 1] - 0.5)) < 0.1, (face, landed, gaps)
        # on the skin (soft mask 1) the output is that face's share of the second source at the same pixels
        w = info["sharp"]
        np.testing.assert_allclose(out[m], (base.image.rgb + w * (sharp - base.image.rgb))[m], atol=1e-5)
    assert abs(infos[0]["sharp"] - infos[1]["sharp"]) > 0.01  # two targets, two shares


def test_the_prediction_needs_enough_skin_and_stays_in_the_range_it_was_fitted_on():
    rgb = np.full((64, 64, 3), 0.5, np.float32)
    skin = np.zeros((64, 64), bool)
    skin[:5, :5] = True
    assert input_features(rgb, skin) is None and predicted_gap(rgb, skin) == GAP_FALLBACK
    skin[:] = True  # flat, noiseless "skin": the linear fit alone would say ~18 octaves
    f = input_features(rgb, skin)
    assert f is not None and GAP_FIT["intercept"] + sum(GAP_FIT[k] * v for k, v in f.items()) > 10
    assert predicted_gap(rgb, skin) == GAP_RANGE[1]


def test_the_policys_landing_point_is_what_texture_excess_measures(tiny_weights):
    """The pipeline's predicted anchor and the texture_excess gate read the same prediction on the
    same skin: a policy run at texture_target t measures texture_excess ~ t."""
    it = load(None, max_side=128, pairs=Pairs(split="val", degradation="medium")).items[1]
    model = ModelSpec.from_mapping({"name": "realesr-general-x4v3", "arch": TINY_SRVGG, "key": "params"})
    pipe = Pipeline(PipelineSpec(model=model), store=WeightStore(weights_dir=tiny_weights))
    for t in (-0.5, 0.5):
        res = pipe.run(it.image, Params(blend=1.0, texture_target=t, texture_anchor="predicted"))
        an = M.InputAnalysis(it.image.rgb, res.faces, res.image.rgb.shape[:2], hr=it.hr)
        excess = M.score(M.Context(res.image.rgb, an), ["texture_excess"])["texture_excess"]
        assert abs(excess - t) < 0.15, (t, excess, res.texture)


def test_the_prediction_is_refused_at_another_scale(tiny_weights):
    it = load(None, max_side=64, pairs=Pairs(split="val")).items[0]
    model = ModelSpec.from_mapping({"name": "realesr-general-x4v3", "arch": TINY_SRVGG, "key": "params"})
    pipe = Pipeline(PipelineSpec(model=model, outscale=2.0), store=WeightStore(weights_dir=tiny_weights))
    with pytest.raises(ConfigError, match="fitted at x4"):
        pipe.run(it.image, Params(texture_target=0.0, texture_anchor="predicted"))
    res = pipe.run(it.image, Params())
    an = M.InputAnalysis(it.image.rgb, res.faces or FaceDetector()(it.image.rgb), res.image.rgb.shape[:2])
    ctx = M.Context(res.image.rgb, an)
    assert math.isnan(M.score(ctx, ["texture_excess"])["texture_excess"])
    assert "fitted at x4" in ctx.notes["texture_excess"]  # NaN for that reason, not for want of a face


def test_more_noise_predicts_less_texture_above_lanczos(cases):
    """Noise in the input already puts energy into the Lanczos upscale's band, so a real photograph
    sits fewer octaves above it (what the degraded pairs show); same skin, same image."""
    hr, _, _, an = cases[0]
    lr = an.input
    skin = skin_mask(lr, an.faces)
    noisy = np.clip(lr + np.random.default_rng(0).normal(0, 8 / 255, lr.shape).astype(np.float32), 0, 1)
    assert input_features(noisy, skin)["noise"] > input_features(lr, skin)["noise"] + 0.5
    assert predicted_gap(noisy, skin) < predicted_gap(lr, skin) - 0.5


@pytest.mark.slow
def test_the_predictor_beats_a_constant_target_against_the_truth():
    """On held-out faces (the validation split, LR 256 px -> x4), clean and degraded together, the
    predicted texture is nearer the real photograph's than the best constant is (the train split's
    median at this size and these levels).  The truth gap is -texture_hr of the Lanczos upscale."""
    detect = FaceDetector()

    def gaps(split):
        out = []
        for level in ("none", "medium"):
            for it in load(None, max_side=256, pairs=Pairs(split=split, degradation=level)).items:
                faces = detect(it.image.rgb)
                if faces:
                    an = M.InputAnalysis(it.image.rgb, faces, it.hr.shape[:2], hr=it.hr)
                    truth = -M.score(M.Context(an.reference, an), ["texture_hr"])["texture_hr"]
                    if math.isfinite(truth):  # (skin too small to measure: no truth to compare with)
                        out.append((truth, predicted_gap(it.image.rgb, skin_mask(it.image.rgb, faces))))
        return np.array(out)

    val, const = gaps("val"), np.median(gaps("train")[:, 0])
    assert len(val) >= 6
    errs, consts = np.abs(val[:, 1] - val[:, 0]), np.abs(const - val[:, 0])
    assert np.median(errs) < np.median(consts) - 0.2, (np.median(errs), np.median(consts))
