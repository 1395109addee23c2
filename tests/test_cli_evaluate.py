"""`tuner evaluate` (both modes) and `tuner metrics` end to end through the CLI."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import PORTRAITS, ROOT, SRVGG_OVERRIDES
from PIL import Image as PILImage

IMAGES = ["A02_usnavy_grace_hopper.jpg", "A10_solvay_conference_1927_group.png"]
CHEAP = "metrics.names=[crunch,wax,seam,edge_halo,delta_e,lr_psnr,lr_ssim,identity]"


def test_evaluate_pipeline_writes_tables(tmp_path, tiny_weights, run_cli, copy_portraits):
    d = copy_portraits(IMAGES)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n")
    r = run_cli("evaluate", f"dataset.path={d}", "dataset.max_side=96", f"out={tmp_path / 'eval'}",
                f"weights_dir={tiny_weights}", *SRVGG_OVERRIDES, "params.tile=32", CHEAP)
    assert r.returncode == 3, r.stderr[-2000:]  # one bad input, reported, the rest scored
    assert "broken.png" in r.stdout + r.stderr
    df = pd.read_csv(tmp_path / "eval" / "metrics.csv")
    assert sorted(df["image"]) == sorted(n.rsplit(".", 1)[0] for n in IMAGES)
    assert {"crunch", "wax", "seam", "lr_psnr", "identity", "notes"} <= set(df.columns)
    assert df["seam"].notna().all()  # tiled: the grid is known
    group = df.set_index("image").loc["A10_solvay_conference_1927_group"]
    assert np.isnan(group["crunch"]) and "crunch: no face" in group["notes"]  # faces too small at 96 px
    summary = pd.read_csv(tmp_path / "eval" / "summary.csv")
    assert list(summary.columns) == ["metric", "direction", "n", "mean", "median", "p10", "p90"]
    assert summary.set_index("metric").loc["lr_psnr", "direction"] == "higher"


def test_evaluate_existing_outputs_ranks_sharpened_above_plain_above_soft_on_crunch(tmp_path, run_cli):
    """Scoring given outputs: an unsharp-masked upscale is crunchier than a plain Lanczos one."""
    import cv2

    d = tmp_path / "in"
    d.mkdir()
    src = np.asarray(PILImage.open(PORTRAITS / "A13_flickr_ccby_05.jpg").convert("RGB").resize((256, 384), 1))
    PILImage.fromarray(src).save(d / "face.png")
    small = cv2.resize(src, (64, 96), interpolation=cv2.INTER_AREA)
    PILImage.fromarray(small).save(d / "face.png")
    up = cv2.resize(small, (256, 384), interpolation=cv2.INTER_LANCZOS4).astype(np.float32) / 255
    sharp = np.clip(up + 1.5 * (up - cv2.GaussianBlur(up, (0, 0), 1.5)), 0, 1)
    soft = cv2.resize(small, (256, 384), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
    for name, img in (("plain", up), ("sharp", sharp), ("soft", soft)):
        o = tmp_path / name
        o.mkdir()
        PILImage.fromarray((img * 255).round().astype(np.uint8)).save(o / "face.png")
        r = run_cli("evaluate", f"dataset.path={d}", "dataset.max_side=null", f"outputs={o}",
                    f"out={tmp_path / ('eval_' + name)}", CHEAP)
        assert r.returncode == 0, r.stderr[-2000:]
    plain = pd.read_csv(tmp_path / "eval_plain" / "metrics.csv").iloc[0]
    sharp_ = pd.read_csv(tmp_path / "eval_sharp" / "metrics.csv").iloc[0]
    soft_ = pd.read_csv(tmp_path / "eval_soft" / "metrics.csv").iloc[0]
    assert sharp_["crunch"] > plain["crunch"] + 3 and sharp_["edge_halo"] > plain["edge_halo"]
    # bilinear keeps less of the band around the input's Nyquist than Lanczos: less crunch, more wax
    assert soft_["crunch"] < plain["crunch"] - 1 and soft_["wax"] > plain["wax"]


def test_metrics_command_lists_the_table(run_cli):
    r = run_cli("metrics")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "direction", "range"]
    rows = {ln.split()[0]: ln for ln in lines[1:]}
    assert {"niqe", "brisque", "piqe", "crunch", "wax", "seam", "identity", "musiq"} <= set(rows)
    assert " lower " in rows["crunch"] and " higher " in rows["lr_psnr"]


def test_unknown_metric_suggests(tmp_path, run_cli):
    r = run_cli("evaluate", f"out={tmp_path}", "metrics.names=[crunchh]")
    assert r.returncode == 1 and "did you mean" in r.stderr


def test_outputs_that_do_not_match_their_inputs_are_reported(tmp_path, run_cli):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(PORTRAITS / "A02_usnavy_grace_hopper.jpg", d / "a.jpg")  # renamed: matched by stem
    o = tmp_path / "out"
    o.mkdir()
    PILImage.fromarray(np.zeros((300, 600, 3), np.uint8)).save(o / "a.png")  # wrong aspect ratio
    r = run_cli("evaluate", f"dataset.path={d}", f"outputs={o}", f"out={tmp_path / 'eval'}", CHEAP)
    assert r.returncode == 1 and "is not an upscale of a.jpg" in r.stdout + r.stderr


def test_nr_only_scoring_of_any_folder(tmp_path, run_cli, copy_portraits):
    """outputs= with no dataset.path: NR metrics on every image, the rest NaN with 'needs input'."""
    d = copy_portraits(["A02_usnavy_grace_hopper.jpg", "A13_flickr_ccby_05.jpg"], "mine")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n")
    r = run_cli("evaluate", f"outputs={d}", f"out={tmp_path / 'eval'}", "metrics.names=[piqe,crunch,identity]")
    assert r.returncode == 3, r.stderr[-2000:]  # the broken file is reported, the rest scored
    df = pd.read_csv(tmp_path / "eval" / "metrics.csv").set_index("image")
    assert sorted(df.index) == ["A02_usnavy_grace_hopper", "A13_flickr_ccby_05"]
    assert df["piqe"].between(0, 100).all() and df["crunch"].isna().all() and df["identity"].isna().all()
    assert all("crunch: needs input" in n and "identity: needs input" in n for n in df["notes"])
    r = run_cli("evaluate", f"outputs={d}", f"out={tmp_path / 'e2'}", "metrics.names=[crunch]")
    assert r.returncode == 1 and "dataset.path" in r.stderr


def test_evaluate_outputs_uses_the_configured_detector(tmp_path, run_cli):
    d = tmp_path / "in"
    d.mkdir()
    src = PILImage.open(PORTRAITS / "A13_flickr_ccby_05.jpg").convert("RGB").resize((64, 96), 1)
    src.save(d / "face.png")
    o = tmp_path / "out"
    o.mkdir()
    src.resize((256, 384), PILImage.Resampling.LANCZOS).save(o / "face.png")
    args = ["evaluate", f"dataset.path={d}", "dataset.max_side=null", f"outputs={o}", "metrics.names=[crunch]"]
    r = run_cli(*args, f"out={tmp_path / 'a'}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not np.isnan(pd.read_csv(tmp_path / "a" / "metrics.csv")["crunch"][0])
    # a threshold no detection reaches: the face is not found, so crunch has no skin to read
    r = run_cli(*args, f"out={tmp_path / 'b'}", "detection.threshold=0.99999")
    assert r.returncode == 0, r.stderr[-2000:]
    row = pd.read_csv(tmp_path / "b" / "metrics.csv").iloc[0]
    assert np.isnan(row["crunch"]) and "no face" in row["notes"]


def test_a_failed_write_leaves_the_previous_tables_intact(tmp_path, monkeypatch, copy_portraits):
    """evaluate replaces metrics.csv / summary.csv atomically: a crash mid-write keeps the old files."""
    import os

    from hydra import compose, initialize_config_dir

    from tuner.commands import evaluate as run_evaluate

    d = copy_portraits(["A02_usnavy_grace_hopper.jpg"], "mine")
    out = tmp_path / "eval"
    out.mkdir()
    for n in ("metrics.csv", "summary.csv"):
        (out / n).write_text("old,complete\n")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[f"outputs={d}", f"out={out}", "metrics.names=[piqe]"])

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        run_evaluate(cfg)
    assert [(out / n).read_text() for n in ("metrics.csv", "summary.csv")] == ["old,complete\n"] * 2
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "summary.csv"]  # no temporary left


THIN_SET = ["A03_usnavy_grace_hopper_128px.jpg"]


def _strip(folder):
    """A 16x400 strip: passes decode (limits.min_side=16), but 10 px high after dataset.max_side=256."""
    PILImage.fromarray(np.full((16, 400, 3), 128, np.uint8)).save(folder / "strip.png")


def test_evaluate_refuses_an_image_too_thin_after_max_side_and_scores_the_others(tmp_path, tiny_weights, run_cli,
                                                                             copy_portraits):
    d = copy_portraits(THIN_SET)
    _strip(d)
    r = run_cli("evaluate", f"dataset.path={d}", f"out={tmp_path / 'eval'}", f"weights_dir={tiny_weights}",
                *SRVGG_OVERRIDES, CHEAP)  # the default dataset.max_side=256
    log = r.stdout + r.stderr
    assert r.returncode == 3, log
    assert "strip.png: 256x10 after dataset.max_side=256 is below limits.min_side=16 (raise dataset.max_side)" in log  # refused at load
    assert "Traceback" not in log and "unexpected" not in log
    assert list(pd.read_csv(tmp_path / "eval" / "metrics.csv")["image"]) == ["A03_usnavy_grace_hopper_128px"]


def test_evaluate_an_unexpected_error_fails_that_image_only(tmp_path, tiny_weights, monkeypatch, caplog,
                                                            copy_portraits):
    """A bug hit by one image (here the reflect pad's own RuntimeError, with the size guard turned off)
    is reported by name and the rows of the others are written (exit 3); Ctrl-C still stops the run."""
    import logging

    from hydra import compose, initialize_config_dir

    from tuner import memory
    from tuner.commands import evaluate as run_evaluate
    from tuner.pipeline import Pipeline

    monkeypatch.setenv("TUNER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(memory, "min_input_side", lambda arch, pre_pad: 1)
    d = copy_portraits(THIN_SET)
    _strip(d)
    out = tmp_path / "eval"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[f"dataset.path={d}", f"out={out}", f"weights_dir={tiny_weights}",
                                                         *SRVGG_OVERRIDES, CHEAP, "limits.min_side=2"])
    with caplog.at_level(logging.DEBUG, logger="tuner"):
        assert run_evaluate(cfg) == 3
    assert "strip.png: unexpected RuntimeError" in caplog.text and "Traceback" in caplog.text
    assert list(pd.read_csv(out / "metrics.csv")["image"]) == ["A03_usnavy_grace_hopper_128px"]

    def interrupted(self, image, params):
        raise KeyboardInterrupt

    monkeypatch.setattr(Pipeline, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_evaluate(cfg)
