"""The search space and the samplers."""

from __future__ import annotations

import optuna
import pytest

from tuner.config import study_settings
from tuner.search import make_sampler, search_space


@pytest.mark.parametrize("sampler", ["tpe", "gp", "nsga2", "random", "grid"])
def test_every_sampler_draws_from_the_search_space(sampler, tmp_path):

    space = search_space({"params": {"tile": {"type": "categorical", "choices": [0, 64]},
                                     "blend": {"type": "float", "low": 0.0, "high": 0.8, "step": 0.4}}})
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"study": {"name": "s", "n_trials": 3, "sampler": sampler, "n_startup_trials": 1}})
    st = study_settings(cfg, tmp_path)
    study = optuna.create_study(sampler=make_sampler(st.sampler, space, seed=st.seed, n_startup_trials=st.n_startup_trials))
    for _ in range(3):
        t = study.ask()
        drawn = {k: knob.suggest(t) for k, knob in space.items()}
        assert drawn["tile"] in (0, 64) and 0.0 <= drawn["blend"] <= 0.8
        study.tell(t, drawn["blend"])


# --------------------------------------------------------------------------- the grid runs out
GRID = {"params": {"tile": {"type": "categorical", "choices": [0, 32, 48]},
                   "blend": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.25}}}


def _grid_study(space, n_trials):
    """As the study does it: trial 0 enqueued (the baseline), then a fresh sampler per trial seeded
    by the trial's number, each trial told through trials.tell; returns the study and what it drew."""
    from optuna.trial import TrialState

    from tuner.search import trial_seed
    from tuner.trials import tell

    study = optuna.create_study()
    study.enqueue_trial({"tile": 0, "blend": 0.0}, user_attrs={"baseline": True})
    seen = []
    for n in range(n_trials):
        study.sampler = make_sampler("grid", space, seed=trial_seed(7, n), n_startup_trials=1)
        t = study.ask()
        drawn = {k: knob.suggest(t) for k, knob in space.items()}
        seen.append((drawn["tile"], drawn["blend"]))
        assert tell(study, t, TrialState.COMPLETE, [float(drawn["tile"])], 0.0)
    return study, seen


def test_a_grid_runs_every_point_once_with_a_sampler_per_trial_and_its_end_is_no_error():
    """GridSampler calls study.stop() when the last point has run, which raised RuntimeError outside
    Study.optimize (the study ended "unexpected error", no preset); and per-trial seeds shuffled the
    grid differently for every trial, so trials repeated points and missed others."""
    space = search_space(GRID)
    points = {(t, b) for t in (0, 32, 48) for b in (0.0, 0.25, 0.5)}
    study, seen = _grid_study(space, len(points) + 1)
    assert sorted(seen[1:]) == sorted(points)  # after the baseline, every point once
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * (len(points) + 1)


def test_a_trial_past_the_end_of_the_grid_is_a_repeat():
    from tuner.search import grid_repeat, grid_values, trial_seed

    space = search_space(GRID)
    assert grid_values(space) == {"tile": [0, 32, 48], "blend": [0.0, 0.25, 0.5]}
    study, _ = _grid_study(space, 10)
    study.sampler = make_sampler("grid", space, seed=trial_seed(7, 10), n_startup_trials=1)
    assert not grid_repeat(study, 0)  # the enqueued baseline
    extra = study.ask()  # study.n_trials larger than the grid: GridSampler would run a visited point again
    assert grid_repeat(study, extra.number)


def test_a_grid_study_stops_at_the_end_of_its_grid_and_exports(tmp_path, tiny_weights, copy_portraits, run_cli):
    from conftest import GFPGAN_OVERRIDES, SRVGG_OVERRIDES

    portraits = copy_portraits(["A02_usnavy_grace_hopper.jpg", "A13_flickr_ccby_05.jpg"], "portraits")
    args = ["tune", "experiment=nr", "study.name=grid", f"weights_dir={tiny_weights}", f"dataset.path={portraits}",
            "dataset.max_side=64", "study.allow_infeasible=true", "study.sampler=grid",
            *[f"search.params.{k}=null" for k in ("denoise", "face_weight", "face_upsample", "blend", "blend_variant")],
            "search.params.tile.choices=[0,32,48]", *SRVGG_OVERRIDES, *GFPGAN_OVERRIDES]
    r = run_cli(*args, "study.n_trials=6", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "grid"
    assert (run / "best_preset.yaml").is_file() and "best trial:" in (run / "summary.txt").read_text()
    study = optuna.load_study(study_name="grid", storage=f"sqlite:///{run / 'study.db'}")
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 4 and sorted(t.params["tile"] for t in done[1:]) == [0, 32, 48]  # the baseline + the grid
    skipped = [t for t in study.trials if t.state.name == "PRUNED"]
    assert len(skipped) == 2 and all(t.user_attrs["reason"].startswith("not run: every point") for t in skipped)
    # resuming with more trials than the grid: nothing runs again, the study exports
    r = run_cli(*args, "study.n_trials=8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(study_name="grid", storage=f"sqlite:///{run / 'study.db'}")
    assert [t.state.name for t in study.trials].count("COMPLETE") == 4 and len(study.trials) == 8


# --------------------------------------------------------------------------- values the pipeline refuses
@pytest.mark.parametrize(("knob", "node", "message"), [
    ("prefilter", {"type": "categorical", "choices": [0.0, 2.0]}, "search.params.prefilter: 2.0"),
    ("blend_variant", {"type": "categorical", "choices": ["global", "bogus"]}, "search.params.blend_variant: 'bogus'"),
    ("model", {"type": "categorical", "choices": ["realesr-general-x4v3", "nope"]}, "search.params.model: 'nope'"),
    ("model", {"type": "categorical", "choices": ["RealESRGAN_x4plu"]}, "did you mean 'RealESRGAN_x4plus'"),
    ("blend", {"type": "float", "low": 0.0, "high": 0.5, "log": True}, "search.params.blend: log: true needs low > 0"),
    ("tile", {"type": "int", "low": -5, "high": 64}, "search.params.tile: low -5"),
    ("tile", {"type": "categorical", "choices": [0, "auto"]}, "search.params.tile: 'auto' cannot be searched"),
    ("tile", {"type": "categorical", "choices": [0, "big"]}, "search.params.tile: 'big'"),
    ("face_upsample", {"type": "categorical", "choices": [False, "yes"]}, "search.params.face_upsample: 'yes'"),
    ("face_weight", {"type": "float", "low": 0.0, "high": 1.5}, "search.params.face_weight: high 1.5"),
    ("denoise", {"type": "categorical", "choices": [None, 0.5]}, "search.params.denoise: None"),
    ("blend", {"type": "float", "low": 0.1, "high": 0.5, "log": True, "step": 0.1}, "log: true takes no step"),
    ("texture_target", {"type": "categorical", "choices": [None, "high"]}, "search.params.texture_target: 'high'"),
])
def test_the_search_space_refuses_what_the_pipeline_would_refuse_when_a_trial_runs(knob, node, message):
    from tuner.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        search_space({"params": {knob: node}})
    assert message in str(e.value)


def test_the_search_space_takes_what_the_pipeline_takes():
    space = search_space({"params": {
        "model": {"type": "categorical", "choices": ["realesr-general-x4v3", "RealESRGAN_x4plus"]},
        "tile": {"type": "int", "low": 0, "high": 256, "step": 64},
        "blend": {"type": "float", "low": 0.05, "high": 0.8, "log": True},
        "blend_variant": {"type": "categorical", "choices": ["global", "skin", "frequency"]},
        "prefilter": {"type": "categorical", "choices": [0.0, 1.0]},
        "face_upsample": {"type": "categorical", "choices": [False, True]},
        "texture_target": {"type": "categorical", "choices": [None, -3.0, 8.0]}}})
    assert set(space) == {"model", "tile", "blend", "blend_variant", "prefilter", "face_upsample", "texture_target"}


# --------------------------------------------------------------------------- conditional knobs
@pytest.mark.parametrize(("face_weight", "drawn"), [(0.5, True), (0.0, False)])
def test_face_upsample_follows_the_face_weight_even_when_that_is_fixed(face_weight, drawn):
    """face_upsample acts wherever a face is pasted: with face_weight fixed at 0.5 (not searched) it
    must be drawn (it was drawn only when face_weight was searched too); with 0 it does nothing."""
    from tuner.pipeline import Params, PipelineSpec
    from tuner.search import suggest
    from tuner.weights import catalogue

    models, faces = catalogue("model"), catalogue("face")
    base = PipelineSpec(model=models["realesr-general-x4v3"], face=faces["gfpgan_v1.4"])
    space = search_space({"params": {"face_upsample": {"type": "categorical", "choices": [False, True]}}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    got = set()
    for _ in range(8):
        t = study.ask()
        _, p = suggest(t, space, base, Params(face_weight=face_weight), models)
        assert ("face_upsample" in t.params) == drawn and p.face_weight == face_weight
        if drawn:
            assert p.face_upsample == t.params["face_upsample"]
        got.add(p.face_upsample)
        study.tell(t, 0.0)
    assert got == ({False, True} if drawn else {False})


def test_grid_a_worker_waits_while_the_last_point_runs_elsewhere(tmp_path):
    """Once every point of the grid has started, GridSampler hands the next trial a point another worker
    is still running (two workers ran the last point twice).  With heartbeats the next worker waits
    instead; when the holder is lost (failed as stale and re-queued) the retry runs that point.  Without
    heartbeats a dead holder cannot be told from a live one, so the duplicate is still asked."""
    import types

    from omegaconf import OmegaConf
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    from tuner.search import grid_taken, trial_seed
    from tuner.storage import StudyLock
    from tuner.study import _next_trial
    from tuner.trials import tell

    space = search_space(GRID)
    st = study_settings(OmegaConf.create({"study": {"name": "g", "n_trials": 20, "sampler": "grid",
                                                    "n_startup_trials": 1}}), tmp_path)

    def last_point_running(db: str):  # the baseline and 8 of the 9 points done, the 9th running elsewhere
        url = f"sqlite:///{tmp_path / db}"
        storage = RDBStorage(url, heartbeat_interval=60)
        study = optuna.create_study(study_name="g", storage=storage)
        study.enqueue_trial({"tile": 0, "blend": 0.0}, user_attrs={"baseline": True})
        for n in range(10):
            study.sampler = make_sampler("grid", space, seed=trial_seed(7, n), n_startup_trials=1)
            t = study.ask()
            params = {k: knob.suggest(t) for k, knob in space.items()}
            if n < 9:
                assert not grid_taken(study.trials, "grid", space)
                assert tell(study, t, TrialState.COMPLETE, [float(params["tile"])], 0.0)
        t.set_user_attr("worker", "elsewhere")  # claimed, as _next_trial does
        t.set_user_attr("claimed", t.number)
        assert grid_taken(study.trials, "grid", space) and not grid_taken(study.trials, "tpe", space)
        return study, storage, url, t, params

    def next_trial(study, storage, url: str, hb: bool) -> tuple[str, int, dict]:
        asked: dict = {}
        bar = types.SimpleNamespace(n=0, refresh=lambda: None)
        what, running = _next_trial(study, storage, StudyLock(url, "g"), st, space, hb, bar, asked)
        return what, running, asked

    def drawn(trial) -> dict:
        return {k: knob.suggest(trial) for k, knob in space.items()}

    study, storage, url, last, point = last_point_running("hb.db")
    assert next_trial(study, storage, url, True)[:2] == ("wait", 1) and len(study.trials) == 10  # nothing asked
    # the holder's worker is lost: its trial failed as stale and re-queued, with its point
    assert tell(study, last, TrialState.FAIL, None, 0.0)
    RetryHeartbeatStaleTrialCallback(max_retry=3)(study, study.trials[last.number])
    assert not grid_taken(study.trials, "grid", space)
    what, _, asked = next_trial(study, storage, url, True)
    assert what == "run" and drawn(asked["trial"]) == point

    study, storage, url, last, point = last_point_running("nohb.db")
    what, _, asked = next_trial(study, storage, url, False)  # no heartbeats: the duplicate is asked, as Optuna would
    assert what == "run" and drawn(asked["trial"]) == point
    for t in (last, asked["trial"]):  # every point finished: not taken (run_trial records further trials as repeats)
        assert tell(study, t, TrialState.COMPLETE, [1.0], 0.0)
    assert not grid_taken(study.trials, "grid", space)
