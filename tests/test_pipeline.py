from __future__ import annotations

import numpy as np
import pytest
from conftest import PORTRAITS, TINY_GFPGAN, TINY_SRVGG

from tuner.cache import StageCache
from tuner.errors import ConfigError
from tuner.images import decode, fit_max_side
from tuner.pipeline import Params, Pipeline, PipelineSpec, dni_plan
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
