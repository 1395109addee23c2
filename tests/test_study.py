"""Studies end to end through the CLI on tiny random-weight models, plus the objective/constraint logic."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
import yaml
from conftest import GFPGAN_OVERRIDES, SRVGG_OVERRIDES
from PIL import Image as PILImage

IMAGES = ["A02_usnavy_grace_hopper.jpg", "A13_flickr_ccby_05.jpg", "A19_flickr_ccby_26.jpg"]


@pytest.fixture()
def portraits(copy_portraits):
    return copy_portraits(IMAGES, "portraits")


def _tune_args(tiny_weights, portraits, name, *extra):
    return ["tune", "experiment=nr", f"study.name={name}", f"weights_dir={tiny_weights}", f"dataset.path={portraits}",
            "dataset.max_side=64", "study.n_startup_trials=2", "study.pruner.n_startup_steps=2",
            # random tiny networks make garbage that cannot meet the constraints: opt in to infeasible exports
            "study.allow_infeasible=true",
            *SRVGG_OVERRIDES, *GFPGAN_OVERRIDES, *extra]


def _states(db, name):
    st = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    return st, [t.state.name for t in st.get_trials(deepcopy=False)]


def test_tune_export_enhance_round_trip(tmp_path, tiny_weights, portraits, run_cli):
    r = run_cli(*_tune_args(tiny_weights, portraits, "rt", "study.n_trials=4", "search.params.tile.choices=[0,32]"),
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "rt"
    study, states = _states(run / "study.db", "rt")
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 4
    info = study.user_attrs["tuner"]
    assert {"denoise", "face_weight", "blend", "tile"} <= set(info["space"]) and info["dropped_knobs"] == []
    assert (run / "summary.txt").exists() and (run / "trials" / "0000" / "metrics.csv").exists()
    assert (run / "trials" / "0000" / "faces.png").exists()
    preset = yaml.safe_load((run / "best_preset.yaml").read_text())
    assert set(preset) >= {"model", "face", "params", "model_identity", "pipeline_version", "metrics", "constraints",
                           "provenance", "realesrgan_cli"}
    assert preset["provenance"]["study"] == "rt" and preset["max_side"] == 64
    # a pasted face (face_weight > 0) is exactly what inference_realesrgan.py cannot express
    assert (preset["params"]["face_weight"] > 0) == ("face_weight=" in " ".join(preset["notes"]))
    assert all("every image" in k for k in preset["constraints"])  # per-image gates, said in the preset
    assert study.trials[0].params.get("denoise") == 1.0  # trial 0: general-x4v3 exactly as shipped

    # MLflow: one parent run, one nested run per trial
    con = sqlite3.connect(run / "mlflow.db")
    kinds = dict(con.execute("select value, count(*) from tags where key='tuner.kind' group by value").fetchall())
    parents = {v for (v,) in con.execute("select value from tags where key='mlflow.parentRunId'")}
    assert kinds == {"study": 1, "trial": len(states)} and len(parents) == 1
    # artifacts live beside mlflow.db in the run folder, not in ./mlruns of the working directory
    assert any((run / "mlartifacts").rglob("metrics.csv")) and not (tmp_path / "mlruns").exists()

    # export reproduces the same preset; enhance with it reproduces the tuned outputs byte for byte
    r = run_cli("export", "study.name=rt", f"out={tmp_path / 'p.yaml'}", "allow_infeasible=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    exported = yaml.safe_load((tmp_path / "p.yaml").read_text())
    assert exported["params"] == preset["params"] and exported["provenance"]["trial"] == preset["provenance"]["trial"]
    r = run_cli("enhance", f"input={portraits}", f"output={tmp_path / 'out'}", f"preset={tmp_path / 'p.yaml'}",
                "max_side=64", "output_format=png", f"weights_dir={tiny_weights}", *SRVGG_OVERRIDES,
                *GFPGAN_OVERRIDES, env={"TUNER_CACHE_DIR": str(tmp_path / "fresh-cache")})
    assert r.returncode == 0, r.stderr
    for n in IMAGES:
        stem = n.rsplit(".", 1)[0]
        assert (tmp_path / "out" / f"{stem}.png").read_bytes() == (run / "best_outputs" / f"{stem}.png").read_bytes()

    # the face model's sha256 is checked too: another GFPGAN file is refused unless explicitly allowed
    assert exported["face_identity"]["sha256"]
    exported["face_identity"]["sha256"] = "0" * 64
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(exported))
    enh = ["enhance", f"input={portraits / IMAGES[0]}", f"output={tmp_path / 'out2'}", f"preset={tmp_path / 'other.yaml'}",
           "max_side=64", f"weights_dir={tiny_weights}", *SRVGG_OVERRIDES, *GFPGAN_OVERRIDES]
    r = run_cli(*enh)
    assert r.returncode == 1 and "face weights" in r.stderr and "allow_weights_mismatch" in r.stderr
    r = run_cli(*enh, "allow_weights_mismatch=true")
    assert r.returncode == 0 and "going on" in r.stdout + r.stderr, r.stderr[-2000:]


def test_resume_after_kill_9_loses_no_trial(tmp_path, tiny_weights, portraits, run_cli):
    args = _tune_args(tiny_weights, portraits, "k9", "study.n_trials=6", "study.heartbeat.interval=1",
                      "study.heartbeat.grace_period=25", "tracking=none", "study.pruner.enabled=false")
    env = dict(os.environ, TUNER_CACHE_DIR=str(tmp_path / "cache"))
    p = subprocess.Popen([sys.executable, "-m", "tuner.cli", *args], cwd=tmp_path, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "runs" / "k9" / "study.db"
    before: dict[int, tuple] = {}
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if db.exists():
                try:
                    st = optuna.load_study(study_name="k9", storage=f"sqlite:///{db}")
                    ts = st.get_trials(deepcopy=False)
                except Exception:  # noqa: BLE001 - the study may not exist yet
                    ts = []
                done = [t for t in ts if t.state.name == "COMPLETE"]
                if len(done) >= 2 and any(t.state.name == "RUNNING" for t in ts):
                    before = {t.number: tuple(t.values) for t in done}
                    break
            time.sleep(0.05)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert len(before) >= 2, "the study never reached 2 finished trials"
    # resumed at once, long before the killed trial's heartbeat goes stale: the worker must wait for
    # optuna to fail it and re-queue it, and still reach exactly n_trials
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    st, states = _states(db, "k9")
    assert states.count("COMPLETE") == 6 and states.count("FAIL") == 1
    after = {t.number: tuple(t.values) for t in st.get_trials(deepcopy=False) if t.state.name == "COMPLETE"}
    assert all(after.get(n) == v for n, v in before.items())  # nothing finished was lost or redone
    assert "RUNNING" not in states


def test_two_workers_share_one_study_exactly(tmp_path, tiny_weights, portraits):
    args = _tune_args(tiny_weights, portraits, "two", "study.n_trials=6", "tracking=none")
    env = dict(os.environ, TUNER_CACHE_DIR=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-m", "tuner.cli", *args], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for pr in procs:
        _, err = pr.communicate(timeout=600)
        assert pr.returncode == 0, err[-3000:]
    st, states = _states(tmp_path / "runs" / "two" / "study.db", "two")
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 6 and "FAIL" not in states
    ts = st.get_trials(deepcopy=False)
    assert len(ts) == 6
    # both workers ran trials (each trial names the worker that claimed it: host and pid), each its own
    workers = {t.user_attrs["worker"] for t in ts}
    assert workers == {f"{socket.gethostname()}:{pr.pid}" for pr in procs}, [t.user_attrs["worker"] for t in ts]
    assert all(t.user_attrs["claimed"] == t.number for t in ts)
    assert sum(bool(t.user_attrs.get("baseline")) for t in ts) == 1


def test_infeasible_study_exports_nothing_unless_asked(tmp_path, tiny_weights, portraits, run_cli):
    args = _tune_args(tiny_weights, portraits, "inf", "study.n_trials=2", "tracking=none",
                      "objective.constraints.crunch.max=-100", "study.allow_infeasible=false")
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 1 and "no completed trial that satisfies" in r.stdout + r.stderr
    assert not (tmp_path / "runs" / "inf" / "best_preset.yaml").exists()
    r = run_cli("export", "study.name=inf", f"out={tmp_path / 'p.yaml'}", "allow_infeasible=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load((tmp_path / "p.yaml").read_text())["provenance"]["all_constraints_hold"] is False


def test_bad_images_are_skipped_and_empty_dataset_is_an_error(tmp_path, tiny_weights, portraits, run_cli):
    (portraits / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"0" * 50)
    PILImage.fromarray(np.zeros((4, 4, 3), np.uint8)).save(portraits / "tiny.png")
    r = run_cli(*_tune_args(tiny_weights, portraits, "bad", "study.n_trials=1", "tracking=none"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "broken.jpg" in r.stdout + r.stderr and "tiny.png" in r.stdout + r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.png").write_bytes(b"")
    r = run_cli(*_tune_args(tiny_weights, empty, "none", "study.n_trials=1", "tracking=none"), cwd=tmp_path)
    assert r.returncode == 1 and "no usable image" in r.stderr


@pytest.mark.parametrize("override, message", [
    ("study.sampler=annealing", "study.sampler"),
    ("search.params.blend.high=2", "search.params.blend"),
    ("+study.n_trails=3", "did you mean 'n_trials'"),
    ("objective.terms.0.metric=crunchy", "unknown metric"),
    ("params.tile=auto", "params.tile=auto"),
    ("study.score_threads=0", "study.score_threads"),
    ("params.blend_variant=sharp", "blend_variant must be one of"),
    ("+face.upsample=true", "face.upsample is now params.face_upsample"),
    ("face.detector=retinaface", "face.detector is now detection.detector"),
    ("+blend_variant=skin", "blend_variant is now params.blend_variant"),
    ("detection.threshold=1.5", "detection.threshold"),
    ("params.texture_anchor=predicted upscale.outscale=2", "fitted at x4"),
])
def test_config_errors_before_any_model_loads(tmp_path, portraits, override, message, run_cli):
    r = run_cli(*_tune_args(tmp_path, portraits, "cfg", *override.split()), cwd=tmp_path)  # no weights in tmp_path
    assert r.returncode == 1 and message in r.stderr, r.stderr[-2000:]


def test_strict_turns_missing_knob_weights_into_an_error(tmp_path, tiny_weights, portraits, run_cli):
    w = tmp_path / "w"
    w.mkdir()
    shutil.copy(tiny_weights / "realesr-general-x4v3.pth", w)  # no wdn twin, no GFPGAN
    r = run_cli(*_tune_args(w, portraits, "strict", "study.strict=true", "allow_download=false"), cwd=tmp_path)
    assert r.returncode == 1 and "cannot be tuned here" in r.stderr and "denoise" in r.stderr


def test_mlflow_failure_is_reported_and_the_study_completes(tmp_path, tiny_weights, portraits, run_cli):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where MLflow wants a folder")
    r = run_cli(*_tune_args(tiny_weights, portraits, "mlf", "study.n_trials=2", f"tracking.uri=file://{blocker}/mlruns"),
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "MLflow: start study run failed" in r.stdout + r.stderr
    st, states = _states(tmp_path / "runs" / "mlf" / "study.db", "mlf")
    assert states.count("COMPLETE") == 2


# ------------------------------------------------------------------ correctness: loops, baselines, resumes
def test_a_trial_that_always_fails_stops_the_study(tmp_path, tiny_weights, portraits, run_cli):
    # seam is NaN on every untiled image, so the objective is NaN and every trial fails
    args = _tune_args(tiny_weights, portraits, "fails", "study.n_trials=5", "tracking=none",
                      "objective.terms=[{metric: seam}]", "~objective.constraints", "search.params.tile.choices=[0]")
    r = run_cli(*args, cwd=tmp_path, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "3 consecutive trials failed" in r.stderr and "objective is NaN" in r.stderr
    _, states = _states(tmp_path / "runs" / "fails" / "study.db", "fails")
    assert states == ["FAIL"] * 3
    # a resumed study counts afresh (the cause may have been fixed), and a total cap holds too
    r = run_cli(*args, "study.max_consecutive_failures=100", "study.max_failures=2", cwd=tmp_path, timeout=300)
    assert r.returncode == 1 and "2 trials failed in all in this run" in r.stderr, r.stderr[-1500:]
    assert _states(tmp_path / "runs" / "fails" / "study.db", "fails")[1] == ["FAIL"] * 5


def test_a_lost_baseline_is_recomputed_not_ignored(tmp_path, tiny_weights, portraits, run_cli):
    args = _tune_args(tiny_weights, portraits, "base", "tracking=none", "study.pruner.enabled=false")
    r = run_cli(*args, "study.n_trials=2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    db = tmp_path / "runs" / "base" / "study.db"
    st, _ = _states(db, "base")
    original = st.user_attrs["baseline"]
    assert set(original) >= {"lr_psnr", "identity"} and len(original["lr_psnr"]) == len(IMAGES)
    st.set_user_attr("baseline", None)  # as if trial 0 had failed or been lost
    r = run_cli("export", "study.name=base", f"out={tmp_path / 'p.yaml'}", "allow_infeasible=true", cwd=tmp_path)
    assert r.returncode == 1 and "baseline" in r.stderr and "tuner tune" in r.stderr
    r = run_cli(*args, "study.n_trials=3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "computing them" in r.stdout + r.stderr
    assert _states(db, "base")[0].user_attrs["baseline"] == original  # the same values, from cached stages


@pytest.mark.parametrize("change, what", [
    ("objective.terms.0.weight=2", "objective"),
    ("search.params.blend.high=0.5", "search space"),
    ("metrics.names=[piqe,crunch]", "metric set"),
    ("metrics.iqa_max_side=512", "metrics.iqa_max_side"),
    ("params.blend=0.3", "fixed params"),
])
def test_resuming_with_other_settings_is_refused(tmp_path, tiny_weights, portraits, run_cli, change, what):
    args = _tune_args(tiny_weights, portraits, "same", "tracking=none", "study.n_trials=1")
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    r = run_cli(*args, change, "study.n_trials=2", cwd=tmp_path)
    assert r.returncode == 1 and f"different {what}" in r.stderr and "new study.name" in r.stderr, r.stderr[-1500:]
    assert len(_states(tmp_path / "runs" / "same" / "study.db", "same")[1]) == 1  # nothing was added


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/b", "..", ""])
def test_study_names_cannot_leave_the_runs_folder(tmp_path, portraits, run_cli, name):
    r = run_cli(*_tune_args(tmp_path, portraits, name), cwd=tmp_path)
    assert r.returncode == 1 and "study.name" in r.stderr
    assert not (tmp_path / "escape").exists() and not (tmp_path / "runs").exists()
