"""Studies end to end through the CLI on tiny random-weight models, plus the objective/constraint logic."""

from __future__ import annotations

import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
import yaml
from conftest import GFPGAN_OVERRIDES, ROOT, SRVGG_OVERRIDES
from PIL import Image as PILImage

from tuner import objective as O
from tuner.errors import ConfigError
from tuner.study import best_trial

IMAGES = ["A02_usnavy_grace_hopper.jpg", "A13_flickr_ccby_05.jpg", "A19_flickr_ccby_26.jpg"]


@pytest.fixture()
def portraits(copy_portraits):
    return copy_portraits(IMAGES, "portraits")


def _tune_args(tiny_weights, portraits, name, *extra):
    return ["tune", f"study.name={name}", f"weights_dir={tiny_weights}", f"dataset.path={portraits}",
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
    assert "face_weight" in " ".join(preset["notes"]) or preset["params"]["face_weight"] == 0

    # MLflow: one parent run, one nested run per trial
    con = sqlite3.connect(run / "mlflow.db")
    kinds = dict(con.execute("select value, count(*) from tags where key='tuner.kind' group by value").fetchall())
    parents = {v for (v,) in con.execute("select value from tags where key='mlflow.parentRunId'")}
    assert kinds == {"study": 1, "trial": len(states)} and len(parents) == 1

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


def test_resume_after_kill_9_loses_no_trial(tmp_path, tiny_weights, portraits, run_cli):
    args = _tune_args(tiny_weights, portraits, "k9", "study.n_trials=6", "study.heartbeat.interval=1",
                      "study.heartbeat.grace_period=2", "tracking=none", "study.pruner.enabled=false")
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
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    st, states = _states(db, "k9")
    assert states.count("COMPLETE") == 6
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
    numbers = [t.number for t in st.get_trials(deepcopy=False)]
    assert len(numbers) == len(set(numbers)) == 6
    assert sum(bool(t.user_attrs.get("baseline")) for t in st.get_trials(deepcopy=False)) == 1


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
])
def test_config_errors_before_any_model_loads(tmp_path, portraits, override, message, run_cli):
    r = run_cli(*_tune_args(tmp_path, portraits, "cfg", override), cwd=tmp_path)  # no weights in tmp_path
    assert r.returncode == 1 and message in r.stderr, r.stderr[-2000:]


def test_strict_turns_missing_knob_weights_into_an_error(tmp_path, tiny_weights, portraits, run_cli):
    w = tmp_path / "w"
    w.mkdir()
    shutil.copy(tiny_weights / "realesr-general-x4v3.pth", w)  # no wdn twin, no GFPGAN
    r = run_cli(*_tune_args(w, portraits, "strict", "study.strict=true", "allow_download=false"), cwd=tmp_path)
    assert r.returncode == 1 and "cannot be tuned here" in r.stderr and "denoise" in r.stderr


# ------------------------------------------------------------------ objective and constraints, in-process
def test_objective_terms_and_constraints():
    obj = O.from_mapping({"terms": [{"metric": "piqe", "scale": 10}, {"metric": "lr_psnr", "weight": 0.5, "scale": 3},
                                    {"metric": "crunch", "target": 8, "scale": 2},
                                    {"metric": "wax", "target": 0, "hinge": "upper"}],
                          "constraints": {"crunch": {"max": 11}, "lr_psnr": {"min_relative": -1}}})
    v = obj.per_image({"piqe": 30, "lr_psnr": 30, "crunch": 10, "wax": -1})
    assert v == pytest.approx(3 - 0.5 * 10 + 1 + 0)
    assert obj.per_image({"piqe": 30, "lr_psnr": 30, "crunch": math.nan, "wax": 2}) == pytest.approx(3 - 5 + 2)
    assert obj.constraint_values({"crunch": 12, "lr_psnr": 28}, {"lr_psnr": 30}) == [1, 1]
    assert obj.constraint_values({"crunch": math.nan, "lr_psnr": 29.5}, {"lr_psnr": 30}) == [0, -0.5]  # NaN = n/a
    with pytest.raises(ConfigError, match="informational"):
        O.from_mapping({"terms": [{"metric": "spectral_slope"}]})


def test_best_trial_never_picks_an_infeasible_one():
    obj = O.from_mapping({"terms": [{"metric": "piqe"}], "constraints": {"crunch": {"max": 11}}})
    study = optuna.create_study()
    for value, crunch in ((1.0, 20.0), (2.0, 9.0), (3.0, 5.0)):
        t = study.ask()
        t.set_user_attr("metrics", {"piqe": value, "crunch": crunch})
        study.tell(t, value)
    t, cons = best_trial(study, obj, allow_infeasible=False)
    assert t.values == [2.0] and cons == [-2.0]
    obj2 = O.from_mapping({"terms": [{"metric": "piqe"}], "constraints": {"crunch": {"max": 0}}})
    with pytest.raises(ConfigError, match="allow_infeasible"):
        best_trial(study, obj2, allow_infeasible=False)
    assert best_trial(study, obj2, allow_infeasible=True)[0].values == [1.0]


def test_every_config_composes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for name in ("enhance", "evaluate", "tune", "export", "weights", "metrics_table"):
            compose(config_name=name, overrides=["+input=x", "+output=y"] if name == "enhance" else [])
        for model in (ROOT / "conf" / "model").glob("*.yaml"):
            compose(config_name="tune", overrides=[f"model={model.stem}"])
        for group in ("face", "objective", "search", "metrics", "tracking", "experiment", "dataset", "study"):
            for f in (ROOT / "conf" / group).glob("*.yaml"):
                cfg = compose(config_name="tune", overrides=[f"{group}={f.stem}"], return_hydra_config=False)
                assert cfg is not None


def test_mlflow_failure_is_reported_and_the_study_completes(tmp_path, tiny_weights, portraits, run_cli):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where MLflow wants a folder")
    r = run_cli(*_tune_args(tiny_weights, portraits, "mlf", "study.n_trials=2", f"tracking.uri=file://{blocker}/mlruns"),
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "MLflow: start study run failed" in r.stdout + r.stderr
    st, states = _states(tmp_path / "runs" / "mlf" / "study.db", "mlf")
    assert states.count("COMPLETE") == 2


@pytest.mark.parametrize("sampler", ["tpe", "gp", "nsga2", "random", "grid"])
def test_every_sampler_draws_from_the_search_space(sampler, tmp_path):
    from tuner.study import make_sampler, search_space, study_settings

    space = search_space({"params": {"tile": {"type": "categorical", "choices": [0, 64]},
                                     "blend": {"type": "float", "low": 0.0, "high": 0.8, "step": 0.4}}})
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"study": {"name": "s", "n_trials": 3, "sampler": sampler, "n_startup_trials": 1}})
    st = study_settings(cfg, tmp_path)
    study = optuna.create_study(sampler=make_sampler(st, space))
    for _ in range(3):
        t = study.ask()
        drawn = {k: knob.suggest(t) for k, knob in space.items()}
        assert drawn["tile"] in (0, 64) and 0.0 <= drawn["blend"] <= 0.8
        study.tell(t, drawn["blend"])
