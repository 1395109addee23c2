"""Presets are data: validated against the catalogue and schema, never executed, weights checked."""

from __future__ import annotations

import pytest
import yaml

from tuner import preset as presets
from tuner.errors import PresetError

GOOD = {"model": "realesr-general-x4v3", "face": "none",
        "params": {"tile": 0, "denoise": None, "face_weight": 0.0, "blend": 0.2},
        "pipeline": {"tile_pad": 10, "pre_pad": 10, "overlap": 0, "outscale": None, "blend_variant": "global",
                     "face_upsample": False, "detector": "retinaface", "detection_threshold": 0.9}}


def _write(tmp_path, data):
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_a_good_preset_loads_and_becomes_overrides(tmp_path):
    data = presets.load(_write(tmp_path, GOOD))
    assert "params.blend=0.2" in presets.overrides(data) and "model=realesr-general-x4v3" in presets.overrides(data)


@pytest.mark.parametrize("change, message", [
    ({"model": "not-a-model"}, "not in the catalogue"),
    ({"model": "x params.tile=0"}, "not in the catalogue"),
    ({"face": "gfpgan_v9"}, "not in the catalogue"),
    ({"params": {"tile": 0, "blend": "${oc.env:HOME}"}}, "must be a finite number"),
    ({"params": {"tile": 0, "sharpen": 1.0}}, "params must be a mapping of"),
    ({"pipeline": {"blend_variant": "${oc.env:HOME}"}}, "blend_variant"),
    ({"pipeline": {"detector": "retinaface,blend_variant=skin"}}, "detector"),
    ({"pipeline": {"face_upsample": "yes"}}, "true or false"),
    ({"pipeline": {"outscale": float("inf")}}, "outscale"),
    ({"pipeline": {"detection_threshold": 5.0}}, "detection_threshold"),
    ({"params": {"tile": 0, "blend": 0.1, "_target_": "os.system"}}, "_target_"),
    ({"provenance": {"hook": {"_target_": "builtins.exec", "_args_": ["print(1)"]}}}, "_target_"),
])
def test_untrusted_presets_are_refused(tmp_path, change, message):
    with pytest.raises(PresetError, match=message):
        presets.load(_write(tmp_path, {**GOOD, **change}))


def test_a_yaml_tag_that_builds_objects_is_refused(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("model: !!python/object/apply:os.system ['touch pwned']\nface: none\nparams: {}\n")
    with pytest.raises(PresetError, match="not valid YAML"):
        presets.load(p)
    assert not (tmp_path / "pwned").exists()
