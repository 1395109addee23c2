"""`tuner evaluate` (both modes) and `tuner metrics` end to end through the CLI."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
from conftest import PORTRAITS, SRVGG_OVERRIDES
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


def test_evaluate_existing_outputs_and_blend_lowers_crunch(tmp_path, run_cli):
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
    for name, img in (("plain", up), ("sharp", sharp)):
        o = tmp_path / name
        o.mkdir()
        PILImage.fromarray((img * 255).round().astype(np.uint8)).save(o / "face.png")
        r = run_cli("evaluate", f"dataset.path={d}", "dataset.max_side=null", f"outputs={o}",
                    f"out={tmp_path / ('eval_' + name)}", CHEAP)
        assert r.returncode == 0, r.stderr[-2000:]
    plain = pd.read_csv(tmp_path / "eval_plain" / "metrics.csv").iloc[0]
    sharp_ = pd.read_csv(tmp_path / "eval_sharp" / "metrics.csv").iloc[0]
    assert sharp_["crunch"] > plain["crunch"] + 3 and sharp_["edge_halo"] > plain["edge_halo"]
    assert abs(plain["crunch"]) < 1.5  # a Lanczos upscale *is* R


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
