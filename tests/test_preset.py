"""Presets are data: validated against the catalogue and schema, never executed, weights checked."""

from __future__ import annotations

import pytest
import yaml
from conftest import PORTRAITS, SRVGG_OVERRIDES

from tuner import preset as presets
from tuner.errors import PresetError
from tuner.weights import sha256_file

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


def test_enhance_refuses_a_preset_tuned_with_other_sr_weights(tmp_path, tiny_weights, run_cli):
    """check_identity: the SR checkpoints resolved now (here the DNI pair that denoise=0.6 mixes) must
    have the preset's model_identity sha256s; else exit 1 naming the SR weights, unless
    allow_weights_mismatch=true, which warns and enhances."""
    src = PORTRAITS / "A03_usnavy_grace_hopper_128px.jpg"
    ident = [{"name": n, "sha256": sha256_file(tiny_weights / f"{n}.pth"), "weight": w}
             for n, w in (("realesr-general-x4v3", 0.6), ("realesr-general-wdn-x4v3", 0.4))]
    preset = {**GOOD, "params": {**GOOD["params"], "denoise": 0.6}, "model_identity": ident}

    def enhance(name: str, identity: list, *extra: str):
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump({**preset, "model_identity": identity}))
        return run_cli("enhance", f"input={src}", f"output={tmp_path / name}", f"preset={p}", "output_format=png",
                       f"weights_dir={tiny_weights}", *SRVGG_OVERRIDES, *extra)

    out = f"{src.stem}.png"
    r = enhance("same", ident)  # the control: the weights it was tuned with pass silently
    assert r.returncode == 0 and "SR weights" not in r.stderr + r.stdout, r.stderr[-2000:]
    for i in range(2):  # the model's checkpoint, then its DNI partner's
        other = [{**m, "sha256": "0" * 64} if j == i else m for j, m in enumerate(ident)]
        r = enhance(f"other{i}", other)
        assert r.returncode == 1, r.stderr[-2000:]
        assert "SR weights" in r.stderr and "0" * 64 in r.stderr and "allow_weights_mismatch" in r.stderr
        assert not (tmp_path / f"other{i}" / out).exists()
    r = enhance("allowed", other, "allow_weights_mismatch=true")
    log = r.stdout + r.stderr
    assert r.returncode == 0 and "SR weights" in log and "going on" in log, r.stderr[-2000:]
    assert (tmp_path / "allowed" / out).read_bytes() == (tmp_path / "same" / out).read_bytes()
