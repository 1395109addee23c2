from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from conftest import PORTRAITS, TINY_GFPGAN, TINY_RRDB, TINY_SRVGG, declare_weights, tiny_state_dict

from tuner.cache import StageCache
from tuner.errors import ConfigError, PipelineError
from tuner.images import decode, fit_max_side
from tuner.memory import estimate_memory
from tuner.pipeline import Params, Pipeline, PipelineSpec, dni_plan
from tuner.spec import MemoryLimits
from tuner.weights import ModelSpec, WeightStore


def _spec(tiny_weights, face=True, **kw):
    model = ModelSpec.from_mapping({"name": "realesr-general-x4v3", "arch": TINY_SRVGG, "key": "params",
                                    "denoise": {"partner": "realesr-general-wdn-x4v3", "weight_on": "base"}})
    partner = ModelSpec.from_mapping({"name": "realesr-general-wdn-x4v3", "arch": TINY_SRVGG, "key": "params"})
    fspec = ModelSpec.from_mapping({"name": "gfpgan_v1.4", "arch": TINY_GFPGAN, "filename": "GFPGANv1.4.pth"})
    return PipelineSpec(model=model, partner=partner, face=fspec if face else None, **kw)


@pytest.fixture()
def image():
    return fit_max_side(decode(PORTRAITS / "A02_usnavy_grace_hopper.jpg"), 96)


def test_knobs_act(tiny_weights, image, tmp_path):
    pipe = Pipeline(_spec(tiny_weights), store=WeightStore(weights_dir=tiny_weights), cache=None)
    base = pipe.run(image, Params()).image.rgb
    assert base.shape == (image.size[0] * 4, image.size[1] * 4, 3)
    for p in (Params(denoise=0.3), Params(face_weight=0.8), Params(blend=0.5)):
        assert not np.array_equal(pipe.run(image, p).image.rgb, base), p
    # face=none and face_weight=0 give identical bytes
    none = Pipeline(_spec(tiny_weights, face=False), store=WeightStore(weights_dir=tiny_weights)).run(image, Params())
    assert none.image.rgb.tobytes() == base.tobytes()
    # determinism of the whole path, faces included
    a = pipe.run(image, Params(face_weight=0.7, blend=0.2)).image.rgb
    b = Pipeline(_spec(tiny_weights), store=WeightStore(weights_dir=tiny_weights)).run(
        image, Params(face_weight=0.7, blend=0.2)).image.rgb
    assert a.tobytes() == b.tobytes()


def test_denoise_weights_follow_upstream(tiny_weights):
    spec = _spec(tiny_weights)
    assert [(m.name, w) for m, w in dni_plan(spec.model, spec.partner, 0.3)] == [
        ("realesr-general-x4v3", 0.3), ("realesr-general-wdn-x4v3", 0.7)]
    assert [m.name for m, _ in dni_plan(spec.model, spec.partner, 1.0)] == ["realesr-general-x4v3"]
    with pytest.raises(ConfigError, match="no interpolation partner"):
        dni_plan(spec.partner, None, 0.5)


def test_cache_skips_networks_for_later_knobs(tiny_weights, image, tmp_path, monkeypatch):
    cache = StageCache(tmp_path / "c")
    pipe = Pipeline(_spec(tiny_weights), store=WeightStore(weights_dir=tiny_weights), cache=cache)
    first = pipe.run(image, Params(face_weight=0.5))
    assert first.cached == {"sr": False, "restore": False}
    # a fresh pipeline (new process) whose networks must not run
    pipe2 = Pipeline(_spec(tiny_weights), store=WeightStore(weights_dir=tiny_weights), cache=cache)
    monkeypatch.setattr(Pipeline, "upscaler", lambda *a: pytest.fail("SR ran despite the cache"))
    monkeypatch.setattr(Pipeline, "restorer", lambda *a: pytest.fail("face net ran despite the cache"))
    again = pipe2.run(image, Params(face_weight=0.5))
    assert again.image.rgb.tobytes() == first.image.rgb.tobytes()
    other = pipe2.run(image, Params(face_weight=0.9, blend=0.3))
    assert other.cached == {"sr": True, "restore": True}


def test_cache_size_limit_and_corrupt_entry(tmp_path):
    cache = StageCache(tmp_path, max_bytes=3000)
    for i in range(5):
        cache.put("sr", f"{i:064x}", {"a": np.full(200, i, np.float32)})  # ~1 KB each
    assert cache.size_bytes() <= 3000
    assert cache.get("sr", f"{4:064x}") is not None  # newest kept
    p = next(tmp_path.rglob("*.npz"))
    p.write_bytes(b"garbage")
    assert cache.get("sr", p.stem) is None and not p.exists()
    assert not list(tmp_path.rglob("*.tmp"))



# ---------------------------------------------------------------- stale cache: every input of a stage is in its key
class _Recording(StageCache):
    """A stage cache that records each lookup as (stage, hit)."""

    def __init__(self, root):
        super().__init__(root)
        self.lookups: list[tuple[str, bool]] = []

    def get(self, stage, key):
        out = super().get(stage, key)
        self.lookups.append((stage, out is not None))
        return out


@pytest.fixture(scope="module")
def two_dicts(tiny_weights, tmp_path_factory):
    """A weights folder whose both.pth holds ``params`` and ``params_ema`` with different random weights
    (as released Real-ESRGAN/GFPGAN files can), beside the tiny GFPGAN."""
    d = tmp_path_factory.mktemp("two_dicts")
    torch.save({**tiny_state_dict(TINY_SRVGG, 5, "params"), **tiny_state_dict(TINY_SRVGG, 6, "params_ema")},
               d / "both.pth")
    shutil.copy(tiny_weights / "GFPGANv1.4.pth", d / "GFPGANv1.4.pth")
    declare_weights(d, "tiny random-weight stand-in built by tests/test_pipeline.py")
    return d


def _both_spec(key="params_ema", **kw):
    model = ModelSpec.from_mapping({"name": "both", "arch": TINY_SRVGG, "filename": "both.pth", "key": key,
                                    "denoise": {"partner": "both-params", "weight_on": "base"}})
    partner = ModelSpec.from_mapping({"name": "both-params", "arch": TINY_SRVGG, "filename": "both.pth",
                                      "key": "params"})
    fspec = ModelSpec.from_mapping({"name": "gfpgan_v1.4", "arch": TINY_GFPGAN, "filename": "GFPGANv1.4.pth"})
    return PipelineSpec(model=model, partner=partner, face=fspec, **kw)


# (what changes: spec fields, params fields) -> the stages that must miss; every other stage must hit
CHANGES = {
    "checkpoint_key": ({"key": "params"}, {}, {"sr"}),
    "tile": ({}, {"tile": 32}, {"sr"}),
    "pre_pad": ({"pre_pad": 0}, {}, {"sr"}),
    "detection_threshold": ({"detection_threshold": 0.5}, {}, {"detect", "restore"}),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_stage_input_misses_the_cache_and_gives_fresh_bytes(two_dicts, image, tmp_path, change):
    spec_kw, params_kw, missed = CHANGES[change]
    store = WeightStore(weights_dir=two_dicts)
    cache = _Recording(tmp_path / "c")
    base = Pipeline(_both_spec(), store=store, cache=cache).run(image, Params(face_weight=0.5))
    assert base.cached == {"sr": False, "restore": False} and base.faces  # the face stages really ran
    cache.lookups.clear()
    # a fresh pipeline on the same cache (a later process): only the disk cache could go stale
    spec, params = _both_spec(**spec_kw), Params(face_weight=0.5, **params_kw)
    changed = Pipeline(spec, store=store, cache=cache).run(image, params)
    assert {stage for stage, hit in cache.lookups if not hit} == missed, cache.lookups
    assert {stage for stage, hit in cache.lookups if hit} == {"sr", "detect", "restore"} - missed, cache.lookups
    fresh = Pipeline(spec, store=store, cache=None).run(image, params)
    assert changed.sr.tobytes() == fresh.sr.tobytes()
    assert changed.image.rgb.tobytes() == fresh.image.rgb.tobytes()
    if change == "checkpoint_key":  # the premise: the two state dicts give different outputs
        assert changed.sr.tobytes() != base.sr.tobytes()


def test_one_file_two_state_dicts_are_two_upscalers(two_dicts, image, tmp_path):
    """DNI between the two state dicts of one file: denoise=1 runs params_ema, denoise=0 params alone; the
    upscaler memo and the SR key must tell them apart within one pipeline."""
    store = WeightStore(weights_dir=two_dicts)
    pipe = Pipeline(_both_spec(), store=store, cache=StageCache(tmp_path / "c"))
    ema = pipe.run(image, Params(denoise=1.0))
    params = pipe.run(image, Params(denoise=0.0))
    assert not params.cached["sr"] and params.sr.tobytes() != ema.sr.tobytes()
    fresh = Pipeline(_both_spec(key="params"), store=store, cache=None).run(image, Params())
    assert params.sr.tobytes() == fresh.sr.tobytes()
    assert pipe.run(image, Params(denoise=1.0)).sr.tobytes() == ema.sr.tobytes()


def test_the_detect_key_follows_the_detector_weights(tmp_path, image, monkeypatch):
    """retinaface_resnet50: another weights file is another detect key (the network itself is stubbed out:
    the key is what is under test)."""
    monkeypatch.setattr(Pipeline, "detector", lambda self: lambda rgb: [])
    cache = _Recording(tmp_path / "c")

    def detect(payload: bytes) -> bool:
        d = tmp_path / payload.decode()
        d.mkdir(exist_ok=True)
        (d / "detection_Resnet50_Final.pth").write_bytes(payload)
        det = ModelSpec.from_mapping({"name": "retinaface_resnet50", "arch": {},
                                      "filename": "detection_Resnet50_Final.pth"})
        spec = PipelineSpec(model=_both_spec().model, detector="retinaface_resnet50", detector_model=det)
        Pipeline(spec, store=WeightStore(weights_dir=d), cache=cache).detect(image)
        return cache.lookups[-1] == ("detect", True)

    assert not detect(b"one")
    assert detect(b"one")  # the same content again: a hit
    assert not detect(b"two")


# ---------------------------------------------------------------- memory guards and params.tile=auto (issue 7)
def _rrdb_spec(**kw):
    """The tiny RRDBNet: its activations (4 x num_feat x s^2 per input pixel) outweigh the output buffers,
    so the tile really changes the estimate (with the tiny SRVGG the output-size stages dominate)."""
    model = ModelSpec.from_mapping({"name": "tiny_rrdb", "arch": TINY_RRDB, "key": "params_ema",
                                    "filename": "tiny_rrdb.pth"})
    return PipelineSpec(model=model, **kw)


def test_params_tile_accepts_auto():
    assert Params.from_mapping({"tile": "auto"}).tile == "auto"
    assert Params.from_mapping({"tile": "AUTO"}).tile == "auto"
    assert Params.from_mapping({"tile": 128}).tile == 128 and Params.from_mapping({"tile": None}).tile == 0
    for bad in ("big", -1):
        with pytest.raises(ConfigError, match="params.tile"):
            Params.from_mapping({"tile": bad})
    with pytest.raises(ConfigError, match="params.tile"):
        Params(tile=True)


def test_auto_tile_within_a_small_budget_equals_that_explicit_tile(tiny_weights, caplog):
    image = fit_max_side(decode(PORTRAITS / "A02_usnavy_grace_hopper.jpg"), 200)  # 200 x 171
    whole = estimate_memory(_rrdb_spec(), image.size, 0).host
    assert estimate_memory(_rrdb_spec(), image.size, 128).host < whole  # the premise: tiling saves memory here
    spec = _rrdb_spec(memory=MemoryLimits(max_memory_bytes=whole - 1))  # tile 0 does not fit; 128 does
    store = WeightStore(weights_dir=tiny_weights)
    with caplog.at_level(logging.INFO, logger="tuner.pipeline"):
        auto = Pipeline(spec, store=store).run(image, Params(tile="auto"))
    assert auto.tile == 128 and auto.plan is not None and auto.plan.requested == "auto"
    assert auto.plan.estimate.host <= whole - 1
    assert any("tile 128" in r.getMessage() and "params.tile=auto" in r.getMessage() for r in caplog.records)
    explicit = Pipeline(_rrdb_spec(), store=store).run(image, Params(tile=128))
    assert explicit.tile == 128
    assert auto.image.rgb.tobytes() == explicit.image.rgb.tobytes()
    # with room to spare auto keeps the whole image: ordinary inputs run exactly as at tile 0
    roomy = Pipeline(_rrdb_spec(memory=MemoryLimits(max_memory_bytes=16 << 30)), store=store)
    assert roomy.plan(image.size, Params(tile="auto")).tile == 0


def test_memory_guards_refuse_before_any_work(tiny_weights, image, monkeypatch):
    monkeypatch.setattr(Pipeline, "upscaler", lambda *a: pytest.fail("the upscale ran for a refused input"))
    store = WeightStore(weights_dir=tiny_weights)
    h, w = image.size
    small = Pipeline(_rrdb_spec(memory=MemoryLimits(max_output_pixels=16 * h * w - 1)), store=store)
    with pytest.raises(PipelineError, match=r"A02_usnavy_grace_hopper\.jpg.*limits\.max_output_pixels=") as e:
        small.run(image, Params())
    assert f"{4 * w}x{4 * h}" in str(e.value)
    # an explicit tile is never changed: over the budget it is refused, naming the limit and the way out
    tight = Pipeline(_rrdb_spec(memory=MemoryLimits(max_memory_bytes=1 << 20)), store=store)
    with pytest.raises(PipelineError, match=r"A02_usnavy_grace_hopper\.jpg.*params\.tile=0.*limits\.max_memory_gb"):
        tight.run(image, Params(tile=0))
    with pytest.raises(PipelineError, match=r"even at tile 128.*max_side"):
        tight.run(image, Params(tile="auto"))


def test_plan_of_a_6000px_photo_allocates_nothing():
    """The issue's photo: a 24000^2 output is refused by the default limit, by name, without a pixel allocated."""
    from tuner.weights import catalogue

    models = catalogue("model")
    general = Pipeline(PipelineSpec(model=models["realesr-general-x4v3"], memory=MemoryLimits(max_memory_bytes=24 << 30)),
                       store=WeightStore())  # an explicit budget: the test must not depend on this machine's free RAM
    with pytest.raises(PipelineError, match=r"big\.jpg: the output would be 24000x24000 .*max_output_pixels=134217728"):
        general.plan((6000, 6000), Params(tile=0), name="big.jpg")
    assert general.plan((1024, 1024), Params(tile=0)).out_size == (4096, 4096)  # a 4096^2 output is fine
    # RealESRGAN_x4plus on a 2048^2 input with a 24 GB budget: the whole image would need ~70 GB of
    # activations, so auto tiles it, and an explicit tile 0 is refused with the tile that would fit
    x4plus = Pipeline(PipelineSpec(model=models["RealESRGAN_x4plus"], memory=MemoryLimits(max_memory_bytes=24 << 30)),
                      store=WeightStore())
    plan = x4plus.plan((2048, 2048), Params(tile="auto"))
    assert plan.tile in (1024, 512) and plan.estimate.host <= 24 << 30
    with pytest.raises(PipelineError, match=rf"params\.tile=auto \(tile {plan.tile} fits\)"):
        x4plus.plan((2048, 2048), Params(tile=0))


def test_the_memo_is_bounded_in_bytes_and_serves_later_calls(tiny_weights, image, tmp_path):
    pipe = Pipeline(_spec(tiny_weights, face=False), store=WeightStore(weights_dir=tiny_weights),
                    memo_limit_bytes=0)
    pipe.run(image, Params())
    assert pipe.memo_bytes() == 0
    # with room: the second call with the same SR key reads neither the network nor the disk cache
    cache = StageCache(tmp_path / "cache")
    pipe = Pipeline(_spec(tiny_weights, face=False), store=WeightStore(weights_dir=tiny_weights), cache=cache)
    first = pipe.run(image, Params(blend=0.2))
    assert pipe.memo_bytes() == first.sr.nbytes + first.reference.nbytes
    hits = cache.hits
    second = pipe.run(image, Params(blend=0.5))
    assert second.cached["sr"] and cache.hits == hits
    assert second.sr is first.sr and not second.sr.flags.writeable  # shared, so nobody may write into it
    # room for one of the two (same size): R, which every trial reuses, wins over the SR output,
    # and a later SR output never pushes R out
    small = Pipeline(_spec(tiny_weights, face=False), store=WeightStore(weights_dir=tiny_weights),
                     memo_limit_bytes=first.sr.nbytes)
    a = small.run(image, Params())
    assert [k[0] for k in small._memo] == ["R"] and small.memo_bytes() == a.reference.nbytes
    b = small.run(image, Params(denoise=0.5))  # another SR key
    assert [k[0] for k in small._memo] == ["R"] and b.reference is a.reference


def test_the_prefilter_denoises_what_the_networks_see_and_nothing_else(tiny_weights, image):
    from tuner.images import prefilter, reference_upscale

    clean = fit_max_side(decode(PORTRAITS / "A02_usnavy_grace_hopper.jpg"), 256).rgb

    def errs(sigma):
        noisy = np.clip(clean + np.random.default_rng(0).normal(0, sigma, clean.shape), 0, 1).astype(np.float32)
        return [float(np.sqrt(np.mean((prefilter(noisy, s) - clean) ** 2))) for s in (0.0, 0.25, 0.5, 1.0)]

    heavy, light = errs(0.08), errs(0.03)
    assert heavy[0] > heavy[1] > heavy[2] > heavy[3], heavy  # heavy noise: stronger is cleaner
    assert light[1] < light[0] < light[3], light  # light noise: a little helps, full strength smooths detail away
    rng = np.random.default_rng(0)
    noisy_rgb = np.clip(image.rgb + rng.normal(0, 0.04, image.rgb.shape), 0, 1).astype(np.float32)
    assert prefilter(noisy_rgb, 0.0) is noisy_rgb

    noisy = image.with_rgb(noisy_rgb)
    pipe = Pipeline(_spec(tiny_weights, face=False), store=WeightStore(weights_dir=tiny_weights))
    off, on = pipe.run(noisy, Params()), pipe.run(noisy, Params(prefilter=0.5))
    assert not np.array_equal(off.sr, on.sr)  # the network saw the denoised input (another stage key)
    # R, and so the metrics, still see the input itself, not the prefiltered one
    assert np.array_equal(on.reference, reference_upscale(noisy.rgb, on.reference.shape[:2]))
    again = pipe.run(noisy, Params(prefilter=0.5))
    assert np.array_equal(again.image.rgb, on.image.rgb) and again.cached["sr"]


def test_trial_0_runs_without_the_prefilter_when_it_is_searched():
    from tuner.search import search_space
    from tuner.study import baseline_params

    space = search_space({"params": {"prefilter": {"type": "categorical", "choices": [0.0, 0.5, 1.0]},
                                      "texture_target": {"type": "categorical", "choices": [None, 3.0]}}})
    assert baseline_params(Params(), _spec(None, face=False), space) == {"prefilter": 0.0, "texture_target": None}
    from tuner.errors import ConfigError

    for bad in ({"type": "categorical", "choices": [2.5, 3.0]},  # no "off": trial 0 could not be the model as shipped
                {"type": "float", "low": 2.0, "high": 4.0}, {"type": "categorical", "choices": [None, 12.0]}):
        with pytest.raises(ConfigError, match="texture_target"):
            search_space({"params": {"texture_target": bad}})


def test_face_upsample_restores_from_the_sr_crop_and_follows_the_sr_key(two_dicts, image, tmp_path):
    """params.face_upsample (GFPGAN's --upscale path) through the real pipeline: another output than
    restoring from the input crop, and its restore stage follows the SR network (another state dict is
    a restore miss with fresh bytes), where the input-crop path does not."""
    store = WeightStore(weights_dir=two_dicts)
    cache = _Recording(tmp_path / "c")
    up = Params(face_weight=1.0, face_upsample=True)
    a = Pipeline(_both_spec(), store=store, cache=cache).run(image, up)
    b = Pipeline(_both_spec(), store=store, cache=cache).run(image, Params(face_weight=1.0))
    assert a.faces and not np.array_equal(a.image.rgb, b.image.rgb)
    cache.lookups.clear()
    c = Pipeline(_both_spec(key="params"), store=store, cache=cache).run(image, up)
    assert ("restore", False) in cache.lookups
    fresh = Pipeline(_both_spec(key="params"), store=store, cache=None).run(image, up)
    assert np.array_equal(c.image.rgb, fresh.image.rgb)
    cache.lookups.clear()
    Pipeline(_both_spec(key="params"), store=store, cache=cache).run(image, Params(face_weight=1.0))
    assert ("restore", True) in cache.lookups  # the input-crop path does not depend on the SR network
