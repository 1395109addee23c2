"""`tuner enhance` and `tuner weights` end to end through the CLI (subprocesses)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import yaml
from conftest import PORTRAITS, ROOT, SRVGG_OVERRIDES, TINY_RRDB, tiny_state_dict
from helpers import camera_jpeg
from PIL import Image as PILImage

GOOD = ["A03_usnavy_grace_hopper_128px.jpg", "A06_lincoln_1860s_160px.png"]


def _cut_camera_jpeg() -> bytes:
    """The first 2000 bytes of a photo with a camera-sized (~6 KB) EXIF block: cut inside the header."""
    return camera_jpeg()[:2000]


def _inputs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for n in GOOD:
        shutil.copy(PORTRAITS / n, d / n)
    (d / "empty.png").write_bytes(b"")
    (d / "notes.jpg").write_text("not an image")
    PILImage.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "tiny.png")
    (d / "cut.jpg").write_bytes(_cut_camera_jpeg())
    return d


def test_enhance_folder_skips_bad_inputs(tmp_path, tiny_weights, run_cli):
    d = _inputs(tmp_path)
    with PILImage.open(PORTRAITS / GOOD[1]) as im:  # grey + alpha: an unusual input, not a bad one
        im.convert("LA").save(d / "grey_alpha.png")
    r = run_cli("enhance", f"input={d}", f"output={tmp_path / 'out'}", f"weights_dir={tiny_weights}",
                *SRVGG_OVERRIDES, "params.tile=64", "params.denoise=0.4", "params.blend=0.2")
    assert r.returncode == 3, r.stderr + r.stdout
    log = r.stdout + r.stderr
    assert "Traceback" not in log
    for bad in ("empty.png", "notes.jpg", "tiny.png", "cut.jpg"):
        assert bad in log
    assert "cut.jpg: cannot read the image header" in log
    outs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outs == sorted([*GOOD, "grey_alpha.png"])
    with PILImage.open(tmp_path / "out" / GOOD[0]) as im:
        assert im.size == (512, 512)
    with PILImage.open(tmp_path / "out" / "grey_alpha.png") as im, PILImage.open(d / "grey_alpha.png") as src:
        assert im.mode == "RGBA" and im.size == (4 * src.size[0], 4 * src.size[1])  # written as grey RGBA


def test_enhance_preset_round_trip_is_byte_exact(tmp_path, tiny_weights, run_cli):
    d = _inputs(tmp_path)
    args = [f"weights_dir={tiny_weights}", *SRVGG_OVERRIDES]
    r = run_cli("enhance", f"input={d / GOOD[1]}", f"output={tmp_path / 'a'}", *args, "params.denoise=0.6",
                "params.blend=0.3", "params.blend_variant=frequency", "output_format=png")
    assert r.returncode == 0, r.stderr
    preset = {"model": "realesr-general-x4v3", "face": "none",
              "params": {"tile": 0, "denoise": 0.6, "face_weight": 0.0, "blend": 0.3},
              "pipeline": {"blend_variant": "frequency"}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(preset))
    # a different cache: the preset path recomputes everything
    r = run_cli("enhance", f"input={d / GOOD[1]}", f"output={tmp_path / 'b'}", *args, f"preset={tmp_path / 'p.yaml'}",
                "output_format=png", env={"TUNER_CACHE_DIR": str(tmp_path / "cache2")})
    assert r.returncode == 0, r.stderr
    name = GOOD[1].rsplit(".", 1)[0] + ".png"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_bare_pth_architecture_detected(tmp_path, run_cli):
    import torch

    torch.save(tiny_state_dict(TINY_RRDB, 3, "params_ema"), tmp_path / "mine.pth")
    r = run_cli("enhance", f"input={PORTRAITS / GOOD[0]}", f"output={tmp_path / 'o'}", "model=custom",
                f"model.path={tmp_path / 'mine.pth'}")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / GOOD[0]).exists()


def test_clear_errors(tmp_path, tiny_weights, run_cli):
    r = run_cli("enhance", f"input={tmp_path / 'nope'}", f"output={tmp_path}", f"weights_dir={tiny_weights}")
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = run_cli("enhance", f"input={PORTRAITS / GOOD[0]}", f"output={tmp_path}", f"weights_dir={tiny_weights}",
                "params.blend=2")
    assert r.returncode == 1 and "params.blend" in r.stderr
    # the wdn partner is absent offline: a clear message naming file and URL
    r = run_cli("enhance", f"input={PORTRAITS / GOOD[0]}", f"output={tmp_path}", f"weights_dir={tmp_path}",
                "params.denoise=0.5", "allow_download=false")
    assert r.returncode == 1 and "realesr-general-x4v3.pth" in r.stderr and "https://github.com" in r.stderr


def test_weights_and_cfg_job(tiny_weights, run_cli):
    r = run_cli("weights", f"weights_dir={tiny_weights}")
    assert r.returncode == 0
    assert "realesr-general-x4v3" in r.stdout and "missing" in r.stdout and str(tiny_weights) in r.stdout
    r = run_cli("enhance", "input=x", "output=y", "--cfg", "job")
    assert r.returncode == 0 and "params:" in r.stdout and "face_weight" in r.stdout
    r = run_cli("--help")
    assert "enhance" in r.stdout and "tune" in r.stdout


def test_enhance_refuses_an_output_over_the_limit_and_goes_on(tmp_path, tiny_weights, run_cli):
    """One input whose output exceeds limits.max_output_pixels is refused by name; the others are written."""
    d = tmp_path / "in"
    d.mkdir()
    for n in GOOD:
        shutil.copy(PORTRAITS / n, d / n)
    limit = 512 * 512  # A03 (128 px) -> 512^2 passes; A06 (160 px) -> 640^2 does not
    r = run_cli("enhance", f"input={d}", f"output={tmp_path / 'out'}", f"weights_dir={tiny_weights}",
                *SRVGG_OVERRIDES, f"limits.max_output_pixels={limit}")
    log = r.stdout + r.stderr
    assert r.returncode == 3, log
    assert f"{GOOD[1]}: the output would be 640x640 = 409600 pixels, over limits.max_output_pixels={limit}" in log
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [GOOD[0]]


def test_enhance_auto_tile_in_a_small_budget(tmp_path, run_cli):
    """params.tile=auto with a small limits.max_memory_gb: the tile chosen is logged and the output is
    byte-identical to that explicit tile (tiny RRDBNet, whose activations the tile really shrinks)."""
    import torch

    from tuner.images import decode, fit_max_side
    from tuner.memory import estimate_memory
    from tuner.pipeline import PipelineSpec
    from tuner.weights import ModelSpec

    torch.save(tiny_state_dict(TINY_RRDB, 3, "params_ema"), tmp_path / "mine.pth")
    src = PORTRAITS / "A02_usnavy_grace_hopper.jpg"
    size = fit_max_side(decode(src), 200).size  # what max_side=200 hands the pipeline
    spec = PipelineSpec(model=ModelSpec.from_mapping({"name": "mine", "arch": TINY_RRDB}))
    whole = estimate_memory(spec, size, 0).host
    assert estimate_memory(spec, size, 256).host >= whole > estimate_memory(spec, size, 128).host
    args = [f"input={src}", "model=custom", f"model.path={tmp_path / 'mine.pth'}", "output_format=png", "max_side=200"]
    r = run_cli("enhance", *args, f"output={tmp_path / 'auto'}", f"limits.max_memory_gb={(whole - 1) / 2**30!r}")
    log = r.stdout + r.stderr
    assert r.returncode == 0, log
    assert "A02_usnavy_grace_hopper.jpg: tile 128 (params.tile=auto" in log
    assert "A02_usnavy_grace_hopper.jpg -> " in log and "tile 128," in log
    r = run_cli("enhance", *args, f"output={tmp_path / 'fixed'}", "params.tile=128")
    assert r.returncode == 0, r.stdout + r.stderr
    name = "A02_usnavy_grace_hopper.png"
    assert (tmp_path / "auto" / name).read_bytes() == (tmp_path / "fixed" / name).read_bytes()


def _strip(folder, name="strip.png"):
    """A 16x400 strip: passes decode (limits.min_side=16), but 4 px high after max_side=100."""
    PILImage.fromarray(np.full((16, 400, 3), 128, np.uint8)).save(folder / name)


def test_enhance_refuses_an_image_too_thin_after_max_side_and_goes_on(tmp_path, tiny_weights, run_cli):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(PORTRAITS / GOOD[0], d / GOOD[0])
    _strip(d)
    args = [f"input={d}", f"weights_dir={tiny_weights}", *SRVGG_OVERRIDES, "max_side=100"]
    r = run_cli("enhance", *args, f"output={tmp_path / 'out'}")
    log = r.stdout + r.stderr
    assert r.returncode == 3, log
    assert "strip.png: 100x4 after max_side=100 is below limits.min_side=16 (raise max_side)" in log
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [GOOD[0]]
    # below limits.min_side allowed: the pipeline refuses the side its reflect pad (upscale.pre_pad) cannot take
    r = run_cli("enhance", *args, f"output={tmp_path / 'out2'}", "limits.min_side=2")
    log = r.stdout + r.stderr
    assert r.returncode == 3, log
    assert "strip.png: 100x4 is too small to upscale: upscale.pre_pad=10" in log
    assert "Traceback" not in log and "unexpected" not in log
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == [GOOD[0]]


def _compose(name, overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def test_enhance_an_unexpected_error_fails_that_image_only(tmp_path, tiny_weights, monkeypatch, caplog):
    """A bug hit by one image (here the reflect pad's own RuntimeError, with the size guard turned off)
    is reported by name and the others go on (exit 3); Ctrl-C still stops the run."""
    from tuner import memory
    from tuner.commands import enhance
    from tuner.pipeline import Pipeline

    monkeypatch.setenv("TUNER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(memory, "min_input_side", lambda arch, pre_pad: 1)
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(PORTRAITS / GOOD[0], d / GOOD[0])
    _strip(d)
    cfg = _compose("enhance", [f"input={d}", f"output={tmp_path / 'out'}", f"weights_dir={tiny_weights}",
                               *SRVGG_OVERRIDES, "max_side=100", "limits.min_side=2"])
    with caplog.at_level(logging.DEBUG, logger="tuner"):
        assert enhance(cfg) == 3
    assert "strip.png: unexpected RuntimeError" in caplog.text and "Traceback" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [GOOD[0]]

    def interrupted(self, image, params):
        raise KeyboardInterrupt

    monkeypatch.setattr(Pipeline, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        enhance(cfg)


def test_enhance_stops_at_the_first_output_it_cannot_write(tmp_path, tiny_weights, monkeypatch):
    """A full or unwritable output folder is the run's problem, not one input's: the run stops at the
    first write with the folder named, instead of upscaling every input and skipping each."""
    from tuner import images
    from tuner.commands import enhance
    from tuner.errors import ConfigError
    from tuner.pipeline import Pipeline

    monkeypatch.setenv("TUNER_CACHE_DIR", str(tmp_path / "cache"))
    d = tmp_path / "in"
    d.mkdir()
    for name in GOOD:
        shutil.copy(PORTRAITS / name, d / name)
    runs = []
    real_run = Pipeline.run
    monkeypatch.setattr(Pipeline, "run", lambda self, image, params: runs.append(1) or real_run(self, image, params))

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(images, "atomic_write_bytes", full)
    cfg = _compose("enhance", [f"input={d}", f"output={tmp_path / 'out'}", f"weights_dir={tiny_weights}",
                               *SRVGG_OVERRIDES, "max_side=64"])
    with pytest.raises(ConfigError, match="No space left on device; check that output=.* is writable"):
        enhance(cfg)
    assert len(runs) == 1


def test_enhance_refuses_two_inputs_with_one_output(tmp_path, tiny_weights, run_cli):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(PORTRAITS / GOOD[0], d / "a_ok.jpg")
    shutil.copy(PORTRAITS / GOOD[0], d / "b_ok.jpg")
    shutil.copy(PORTRAITS / GOOD[1], d / "b_ok.png")
    r = run_cli("enhance", f"input={d}", f"output={tmp_path / 'out'}", f"weights_dir={tiny_weights}",
                *SRVGG_OVERRIDES, "output_format=png")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "b_ok.jpg, b_ok.png -> " in r.stderr and "same output" in r.stderr
    assert not (tmp_path / "out").exists()
    # names that differ only by case are one file on a case-insensitive file system (macOS, Windows)
    (d / "b_ok.png").rename(d / "A_OK.png")
    r = run_cli("enhance", f"input={d}", f"output={tmp_path / 'out'}", f"weights_dir={tiny_weights}",
                *SRVGG_OVERRIDES, "output_format=png")
    assert r.returncode == 1 and "A_OK.png, a_ok.jpg -> " in r.stderr, r.stdout + r.stderr


def test_enhance_refuses_to_overwrite_its_inputs(tmp_path, tiny_weights, run_cli):
    d = tmp_path / "in"
    d.mkdir()
    for n in GOOD:
        shutil.copy(PORTRAITS / n, d / n)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    r = run_cli("enhance", f"input={d}", f"output={d}", f"weights_dir={tiny_weights}", *SRVGG_OVERRIDES)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "would overwrite input file(s)" in r.stderr and GOOD[0] in r.stderr and GOOD[1] in r.stderr
    # a single file, written as another format beside itself: refused too (A06 is a png)
    r = run_cli("enhance", f"input={d / GOOD[1]}", f"output={d}", f"weights_dir={tiny_weights}", *SRVGG_OVERRIDES,
                "output_format=png")
    assert r.returncode == 1 and "would overwrite input file(s)" in r.stderr, r.stdout + r.stderr
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
