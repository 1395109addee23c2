"""The architecture table: every catalogue config validates, every row builds, SR rows detect themselves."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_GFPGAN, TINY_RRDB, TINY_SRVGG, tiny_state_dict

from tuner import archs
from tuner.config import face_spec, model_spec
from tuner.errors import ConfigError, WeightsError
from tuner.weights import catalogue

# the RestoreFormer stand-in of tests/test_faces.py
TINY_RESTOREFORMER = {"type": "RestoreFormer", "n_embed": 32, "embed_dim": 16, "ch": 32, "ch_mult": [1, 2],
                      "num_res_blocks": 1, "attn_resolutions": [16], "resolution": 64, "z_channels": 16, "head_size": 2}
TINY = {"RRDBNet": TINY_RRDB, "SRVGGNetCompact": TINY_SRVGG, "GFPGANv1Clean": TINY_GFPGAN,
        "RestoreFormer": TINY_RESTOREFORMER}


def test_table_rows():
    assert archs.names("sr") == ["RRDBNet", "SRVGGNetCompact"]
    assert archs.names("face") == ["GFPGANv1Clean", "RestoreFormer"]
    assert set(TINY) == set(archs.TABLE)


@pytest.mark.parametrize("name", list(archs.TABLE))
def test_row_keys_match_the_constructor(name):
    """required = the constructor's parameters without a default, optional = those with one."""
    row = archs.TABLE[name]
    params = [p for p in inspect.signature(row.load().__init__).parameters.values() if p.name != "self"]
    assert row.required == tuple(p.name for p in params if p.default is inspect.Parameter.empty)
    assert row.optional == tuple(p.name for p in params if p.default is not inspect.Parameter.empty)


@pytest.mark.parametrize("group,kind", [("model", "sr"), ("face", "face")])
def test_every_catalogue_config_validates(group, kind):
    specs = catalogue(group)
    assert specs
    for spec in specs.values():
        assert archs.validate(spec.arch, kind=kind).kind == kind, spec.name


def test_catalogue_specs_pass_model_spec_and_face_spec():
    from dataclasses import asdict

    for spec in catalogue("model").values():
        node = {k: v for k, v in asdict(spec).items() if k in ("name", "arch", "url", "sha256", "key", "scale")}
        assert model_spec(node).arch == spec.arch
    for spec in catalogue("face").values():
        face = face_spec({"name": spec.name, "arch": dict(spec.arch), "url": spec.url})
        assert face is not None and face.arch == spec.arch


@pytest.mark.parametrize("name", list(archs.TABLE))
def test_each_row_builds_a_tiny_network(name):
    arch = TINY[name]
    net = archs.build(arch, kind=archs.TABLE[name].kind)
    assert isinstance(net, torch.nn.Module) and type(net).__name__ == name
    assert sum(p.numel() for p in net.parameters()) > 0


@pytest.mark.parametrize("arch", [TINY_RRDB, {**TINY_RRDB, "scale": 2, "num_block": 3}, TINY_SRVGG,
                                  {**TINY_SRVGG, "act_type": "relu", "num_conv": 5}])
def test_detect_round_trips(arch):
    sd = tiny_state_dict(arch, 0)["params"]
    got = archs.detect(sd)
    assert {k: got[k] for k in arch} == arch
    archs.validate(got, kind="sr")  # a detected arch is a valid config (SRVGGNetCompact's extra `scale` included)
    archs.build(got).load_state_dict(sd, strict=True)


def test_detect_rejects_unknown():
    with pytest.raises(WeightsError, match="neither RRDBNet nor SRVGGNetCompact"):
        archs.detect({"foo.weight": torch.zeros(1)})


def test_unknown_key_is_named_with_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"'num_feats' \(did you mean 'num_feat'\?\).*Allowed: .*'num_grow_ch'"):
        archs.validate({**TINY_RRDB, "num_feats": 8})
    with pytest.raises(ConfigError, match="model 'm': unknown key.*'foo'"):
        model_spec({"name": "m", "arch": {**TINY_SRVGG, "foo": 1}})
    with pytest.raises(ConfigError, match="unknown key.*'foo'"):
        archs.build({**TINY_GFPGAN, "foo": 1})


def test_missing_key_is_named():
    arch = {k: v for k, v in TINY_RRDB.items() if k != "num_in_ch"}
    with pytest.raises(ConfigError, match=r"missing required key\(s\) \['num_in_ch'\]. Allowed"):
        archs.build(arch)
    with pytest.raises(ConfigError, match=r"face 'f': arch for GFPGANv1Clean is missing .*'out_size'"):
        face_spec({"name": "f", "arch": {"type": "GFPGANv1Clean"}})


def test_unknown_type_suggests_close_names():
    with pytest.raises(ConfigError, match=r"unknown SR architecture type 'RRDBnet' \(did you mean RRDBNet\?\); "
                                          "arch.type must be RRDBNet or SRVGGNetCompact"):
        archs.get("RRDBnet", kind="sr")
    with pytest.raises(ConfigError, match=r"model 'm': unknown SR architecture type 'srvgg.*did you mean SRVGGNetCompact"):
        model_spec({"name": "m", "arch": {"type": "srvggnetcompact"}})
    with pytest.raises(ConfigError, match="face 'f': unknown face architecture type 'RestorFormer'.*RestoreFormer"):
        face_spec({"name": "f", "arch": {"type": "RestorFormer"}})
    with pytest.raises(ConfigError, match="arch.type is missing"):
        model_spec({"name": "m", "arch": {}})


def test_type_of_the_other_kind_says_so():
    with pytest.raises(ConfigError, match="GFPGANv1Clean is a face restoration architecture"):
        archs.build(TINY_GFPGAN, kind="sr")
    with pytest.raises(ConfigError, match="RRDBNet is a super-resolution architecture"):
        face_spec({"name": "f", "arch": TINY_RRDB})


def test_importing_the_table_imports_no_torch():
    code = "import sys, tuner.archs; assert 'torch' not in sys.modules and 'basicsr' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
