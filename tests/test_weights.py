from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
import torch
from conftest import SHARED_WEIGHTS, needs_shared_weights

from tuner.errors import WeightsError
from tuner.weights import ModelSpec, WeightStore, catalogue, load_state_dict


def _spec(**kw):
    base = {"name": "m", "arch": {"type": "RRDBNet"}, "url": "http://127.0.0.1:9/m.pth"}
    base.update(kw)
    return ModelSpec.from_mapping(base)


def test_catalogue_covers_required_models():
    names = set(catalogue("model")) | set(catalogue("face"))
    for n in ["RealESRGAN_x4plus", "RealESRNet_x4plus", "RealESRGAN_x2plus", "RealESRGAN_x4plus_anime_6B",
              "realesr-general-x4v3", "realesr-general-wdn-x4v3", "realesr-animevideov3", "gfpgan_v1.3",
              "gfpgan_v1.4", "restoreformer"]:
        assert n in names
    for spec in catalogue("model").values():
        assert spec.url and spec.url.startswith("https://github.com/")


def test_resolution_order(tmp_path, monkeypatch):
    explicit, wdir, envdir, cache = (tmp_path / n for n in ("explicit", "wdir", "env", "cache"))
    for d in (explicit, wdir, envdir, cache):
        d.mkdir()
        (d / "m.pth").write_bytes(d.name.encode())
    monkeypatch.setenv("TUNER_WEIGHTS_DIR", str(envdir))
    s = _spec()
    assert WeightStore(weights_dir=wdir, cache_dir=cache).resolve(_spec(path=str(explicit / "m.pth"))) == explicit / "m.pth"
    assert WeightStore(weights_dir=wdir, cache_dir=cache).resolve(s) == wdir / "m.pth"
    assert WeightStore(cache_dir=cache).resolve(s) == envdir / "m.pth"  # $TUNER_WEIGHTS_DIR
    monkeypatch.delenv("TUNER_WEIGHTS_DIR")
    assert WeightStore(cache_dir=cache).resolve(s) == cache / "m.pth"


def test_missing_offline_names_file_url_and_place(tmp_path):
    store = WeightStore(weights_dir=tmp_path, cache_dir=tmp_path / "c")
    with pytest.raises(WeightsError) as e:
        store.resolve(_spec())  # download from a closed local port fails at once
    msg = str(e.value)
    assert "m.pth" in msg and "http://127.0.0.1:9/m.pth" in msg and str(tmp_path) in msg
    with pytest.raises(WeightsError, match="downloads are disabled"):
        WeightStore(weights_dir=tmp_path, cache_dir=tmp_path / "c", allow_download=False).resolve(_spec())
    assert not list((tmp_path / "c").glob("*")) if (tmp_path / "c").exists() else True  # no partial file left


def test_sha256_mismatch_refused(tmp_path):
    (tmp_path / "m.pth").write_bytes(b"abc")
    good = hashlib.sha256(b"abc").hexdigest()
    store = WeightStore(weights_dir=tmp_path, cache_dir=tmp_path / "c")
    assert store.resolve(_spec(sha256=good)) == tmp_path / "m.pth"
    with pytest.raises(WeightsError, match="Refusing"):
        store.resolve(_spec(sha256="0" * 64))


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path(_Evil.target),))


def test_pickle_that_runs_code_is_never_executed(tmp_path):
    _Evil.target = str(tmp_path / "pwned")
    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        pickle.dump({"params": _Evil()}, f)
    # a plain pickle.load would create the file: prove the payload is live
    with pytest.raises(WeightsError, match="refused"):
        load_state_dict(p)
    assert not (tmp_path / "pwned").exists()
    with open(p, "rb") as f:  # control: the payload is live under a plain pickle.load
        pickle.load(f)  # noqa: S301
    assert (tmp_path / "pwned").exists()
    (tmp_path / "pwned").unlink()
    torch.save({"params": _Evil()}, tmp_path / "evil2.pth")
    with pytest.raises(WeightsError, match="refused"):
        load_state_dict(tmp_path / "evil2.pth")
    assert not (tmp_path / "pwned").exists()


def test_load_picks_key_and_strips_module_prefix(tmp_path):
    t = torch.zeros(2)
    torch.save({"params": {"module.a": t}, "params_ema": {"b": t}}, tmp_path / "x.pth")
    assert list(load_state_dict(tmp_path / "x.pth")) == ["b"]
    assert list(load_state_dict(tmp_path / "x.pth", "params")) == ["a"]
    with pytest.raises(WeightsError, match="key 'nope'"):
        load_state_dict(tmp_path / "x.pth", "nope")


# ------------------------------------------------------------------ pinned hashes and accepted copies
# The official release files' sha256, as pinned by independent downloaders (AUR PKGBUILDs, stable-diffusion
# UIs and other projects found with a code search, at least two each): a copy of the catalogue must not drift.
OFFICIAL = {
    "RealESRGAN_x4plus": "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
    "RealESRNet_x4plus": "a820b9bde89a874d7599d545567308ce6c128fc8754a53208eda016d40aa81df",
    "RealESRGAN_x2plus": "49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb",
    "RealESRGAN_x4plus_anime_6B": "f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da",
    "realesr-general-x4v3": "8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292",
    "realesr-general-wdn-x4v3": "1641f8c4464b9f097c9fdda5589273713f67cf59f3d909e0bd688f0cee269dca",
    "gfpgan_v1.3": "c953a88f2727c85c3d9ae72e2bd4846bbaf59fe6972ad94130e23e7017524a70",
    "gfpgan_v1.4": "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad",
}


def test_catalogue_pins_the_official_hashes_of_the_models_it_ships():
    models = {**catalogue("model"), **catalogue("face")}
    assert {n: models[n].sha256 for n in OFFICIAL} == OFFICIAL


def test_a_file_with_an_unknown_hash_is_refused_even_under_the_official_name(tmp_path):
    (tmp_path / "realesr-general-x4v3.pth").write_bytes(b"not the official file")
    store = WeightStore(weights_dir=tmp_path, cache_dir=tmp_path / "c", allow_download=False)
    with pytest.raises(WeightsError, match="none of the accepted.*tuner-weights.yaml"):
        store.resolve(catalogue("model")["realesr-general-x4v3"])


def test_a_weights_folder_can_declare_an_accepted_copy(tmp_path):
    from conftest import declare_weights

    (tmp_path / "realesr-general-x4v3.pth").write_bytes(b"a trusted converted copy")
    declare_weights(tmp_path, "converted in-house from the ncnn release")
    store = WeightStore(weights_dir=tmp_path, cache_dir=tmp_path / "c", allow_download=False)
    spec = catalogue("model")["realesr-general-x4v3"]
    assert store.resolve(spec) == tmp_path / "realesr-general-x4v3.pth"
    assert "converted in-house" in store.locate(spec).why
    (tmp_path / "realesr-general-x4v3.pth").write_bytes(b"changed after the declaration")
    from tuner import weights as W

    W._SHA_MEMO.clear()
    with pytest.raises(WeightsError, match="Refusing"):
        store.resolve(spec)


def test_declarations_are_validated(tmp_path):
    (tmp_path / "tuner-weights.yaml").write_text("files: {'../up.pth': {sha256: abc, provenance: x}}\n")
    (tmp_path / "realesr-general-x4v3.pth").write_bytes(b"x")
    with pytest.raises(WeightsError, match="plain file name"):
        WeightStore(weights_dir=tmp_path, allow_download=False).resolve(catalogue("model")["realesr-general-x4v3"])


@needs_shared_weights("realesr-general-x4v3.pth", "RealESRGAN_x4plus.pth")
def test_the_offline_copies_are_accepted_with_their_provenance():
    store = WeightStore(weights_dir=SHARED_WEIGHTS, allow_download=False)
    for n in ("realesr-general-x4v3", "RealESRGAN_x4plus"):
        loc = store.locate(catalogue("model")[n])
        assert loc.verified is True and "ncnn" in loc.why, (n, loc)


@pytest.mark.parametrize("bad", ["../evil.pth", "/etc/passwd", "a/b.pth", ".."])
def test_model_file_names_cannot_escape_their_folder(bad):
    from tuner.errors import ConfigError

    with pytest.raises(ConfigError, match="plain file name"):
        _spec(filename=bad)
    with pytest.raises(ConfigError, match="plain file name"):
        _spec(url=f"https://example.org/x/{bad}" if bad == ".." else "https://example.org/x/" + bad.split("/")[-1] + "/")


def test_min_eye_distance_is_not_a_silent_option():
    from tuner.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown keys"):
        _spec(min_eye_distance=3)
