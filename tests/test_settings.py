"""The one settings schema: a dict round trip, a Hydra round trip, and the pipeline's types."""

from __future__ import annotations

import pytest
from conftest import ROOT

from tuner.errors import PresetError
from tuner.settings import Settings

TUNED = Settings(model="RealESRGAN_x4plus", face="gfpgan_v1.4", tile=128, denoise=0.3, face_weight=0.6, blend=0.25,
                 texture_target=2.5, blend_variant="skin", face_upsample=True, tile_pad=12, pre_pad=0, overlap=8, outscale=3.5,
                 half=False, detector="retinaface", detection_threshold=0.8)
# a trial of the default study (conf/search/policy.yaml) with its knobs off their enhance.yaml defaults
POLICY = Settings(model="realesr-general-x4v3", face="gfpgan_v1.4", denoise=0.4, face_weight=0.5, face_upsample=True,
                  blend=0.3, blend_variant="skin", prefilter=0.25, texture_anchor="predicted", texture_target=-0.5)


def test_every_field_maps_to_the_pipelines_types_by_name():
    """Settings.of / .params / .spec copy fields by name: each field is the model, the face, a
    Params field or a PipelineSpec option, and nothing of a preset is left out."""
    from dataclasses import fields

    from tuner.pipeline import Params, PipelineSpec
    from tuner.settings import SPEC_KEYS

    names = {f.name for f in fields(Settings)}
    params = {f.name for f in fields(Params)}
    assert names == {"model", "face"} | params | set(SPEC_KEYS)
    assert set(SPEC_KEYS) <= {f.name for f in fields(PipelineSpec)} and not params & set(SPEC_KEYS)


def test_dict_round_trip():
    d = TUNED.to_dict()
    assert set(d) == {"model", "face", "params", "pipeline"}
    assert Settings.from_dict(d) == TUNED
    assert Settings.from_dict({"model": "realesr-general-x4v3", "params": {"tile": "auto"}}).tile == "auto"


def _enhance_pipeline(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from tuner.config import pipeline_config

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="enhance", overrides=overrides)
    return pipeline_config(cfg)


@pytest.mark.parametrize("settings", [TUNED, POLICY,
                                      Settings(model="realesr-general-x4v3", blend=0.7, detection_threshold=0.7)])
def test_hydra_overrides_compose_into_the_same_pipeline(settings, monkeypatch, tmp_path):
    """The settings' Hydra overrides compose into exactly these settings, none left at enhance.yaml's default."""
    monkeypatch.setenv("TUNER_CACHE_DIR", str(tmp_path))
    pc = _enhance_pipeline(["input=x", "output=y", *settings.overrides()])
    assert Settings.of(pc.spec, pc.params) == settings


def test_a_preset_applies_the_default_studys_knobs_as_recorded(monkeypatch, tmp_path):
    """What `tuner enhance preset=...` applies is exactly what the study recorded: the trial's settings
    dict -> the exported preset file -> the CLI's preset overrides -> the composed pipeline, with the
    default study's knobs (prefilter, texture_anchor, texture_target, blend_variant) off their defaults."""
    from tuner import preset as presets
    from tuner.cli import expand_preset

    monkeypatch.setenv("TUNER_CACHE_DIR", str(tmp_path))
    recorded = Settings.from_dict(POLICY.to_dict(), where="trial 0")  # what a trial's user_attrs hold
    path = presets.save(presets.build(recorded, model_identity=[], face_sha256=None), tmp_path / "p.yaml")
    pc = _enhance_pipeline(expand_preset(["input=x", "output=y", f"preset={path}"]))
    p = pc.params
    assert (p.prefilter, p.texture_anchor, p.texture_target, p.blend_variant) == (0.25, "predicted", -0.5, "skin")
    assert Settings.of(pc.spec, pc.params) == POLICY


def test_spec_keeps_the_base_machine_settings():
    from tuner.pipeline import PipelineSpec
    from tuner.weights import catalogue

    models, faces = catalogue("model"), catalogue("face")
    base = PipelineSpec(model=models["realesr-general-x4v3"], device="cpu")
    spec = TUNED.spec(base, models, faces)
    assert spec.device == "cpu" and spec.model.name == "RealESRGAN_x4plus"
    assert spec.partner is not None and spec.partner.name == "RealESRNet_x4plus"  # the new model's DNI partner
    assert Settings.of(spec, TUNED.params) == TUNED


@pytest.mark.parametrize("bad, message", [
    ({"model": "nope"}, "not in the catalogue"),
    ({"model": "realesr-general-x4v3", "params": {"tile": -1}}, "params.tile"),
    ({"model": "realesr-general-x4v3", "pipeline": {"tile_pad": 1.5}}, "integer"),
    ({"model": "realesr-general-x4v3", "pipeline": {"device": "cuda"}}, "pipeline must be a mapping of"),
    ({"model": "realesr-general-x4v3", "pipeline": {"texture_anchor": "truth"}}, "texture_anchor='truth' is not one of"),
])
def test_bad_settings_are_refused(bad, message):
    with pytest.raises(PresetError, match=message):
        Settings.from_dict(bad)


def test_texture_anchor_round_trips_and_older_presets_read_as_lanczos():
    st = Settings(model="realesr-general-x4v3", texture_target=0.25, texture_anchor="predicted")
    assert Settings.from_dict(st.to_dict()) == st
    assert st.params.texture_anchor == "predicted" and "params.texture_anchor=predicted" in st.overrides()
    older = st.to_dict()
    del older["pipeline"]["texture_anchor"]  # a preset written before the anchor existed
    assert Settings.from_dict(older).texture_anchor == "lanczos"
