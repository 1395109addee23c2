"""`tuner tune`: an Optuna study over the pipeline's knobs, driven directly (ask/tell).

This module is the study's frame: take a validated :class:`TuneJob` (built from the config
by :func:`tuner.config.tune_job`), open (or resume) the study with its
identity and baseline trial, run the worker loop, and finish with the summary and the preset.
Its parts live one floor down: ``search`` (knobs, samplers), ``storage`` (storage URL, lock,
heartbeats), ``trials`` (one trial: pipeline -> scoring -> gates -> tell), ``export`` (best
trial -> preset), ``validate`` (the held-out split).  Any number of processes or machines can
run the loop against one storage: a lock (a file, or an advisory lock inside PostgreSQL:
:class:`tuner.storage.StudyLock`) makes "count, then ask" atomic, so the study stops at exactly
``study.n_trials`` finished trials; heartbeats fail a killed worker's trial and re-queue it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import PIPELINE_VERSION, __version__, validate
from . import objective as O
from . import preset as presets
from .cache import StageCache
from .dataset import Dataset
from .errors import ConfigError, TunerError
from .export import SCHEMA, best_trial, build_preset, holds
from .files import atomic_write_bytes
from .images import encode
from .pipeline import Params, PipelineSpec
from .scoring import Scorer
from .search import Knob, grid_taken, make_sampler, resolve_knobs, trial_seed
from .storage import (
    Heartbeat,
    StudyLock,
    StudySettings,
    first_beat,
    heartbeat_enabled,
    make_storage,
    outage_within,
    recover_orphans,
    redact_url,
    retrying,
    worker_id,
)
from .texture import PREDICTOR
from .tracking import Tracker
from .trials import TrialRunner, run_trial
from .weights import WeightStore

log = logging.getLogger("tuner")


# ---------------------------------------------------------------- run


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"tuner": __version__, "pipeline_version": PIPELINE_VERSION}
    for pkg in ("torch", "optuna", "realesrgan", "gfpgan", "basicsr", "pyiqa", "mlflow", "opencv-python", "numpy"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


@dataclass(frozen=True)
class TuneJob:
    """Everything one `tuner tune` worker needs, validated (the config is read only at the edge)."""

    study: StudySettings
    spec: PipelineSpec  # the base pipeline; a trial may change the model and its options
    params: Params  # the knobs' values where they are not searched
    space: dict[str, Knob]
    objective: O.Objective
    objective_node: Any  # the objective as configured: part of the study's identity
    metric_names: list[str]
    iqa_max_side: int
    dataset: Dataset
    store: WeightStore
    cache: StageCache | None
    run_dir: Path
    tracking_enabled: bool = True
    tracking_uri: str = ""  # "" = sqlite mlflow.db in run_dir
    experiment: str = "tuner"
    contact_sheet_faces: int = 6
    validation: Dataset | None = None  # the held-out split of a paired dataset, scored after the study


class StudyAborted(TunerError):
    """The study stopped itself: trials keep failing (the message gives the last error)."""


def baseline_params(base: Params, base_spec: PipelineSpec, space: Mapping[str, Knob]) -> dict[str, Any]:
    """Trial 0's values: the configured params, with ``denoise`` at the value that runs the
    model exactly as shipped (DNI weight 1 on the model itself) when denoise is searched."""
    out: dict[str, Any] = {"tile": base.tile, "denoise": base.denoise, "face_weight": base.face_weight,
                           "blend": base.blend, "prefilter": base.prefilter}
    if "denoise" in space and out["denoise"] is None:
        out["denoise"] = 1.0 if base_spec.model.denoise_weight_on == "base" else 0.0
    out = {k: v for k, v in out.items() if k in space and v is not None}
    if "texture_target" in space:
        out["texture_target"] = None  # the policy off: the model as shipped (search_space makes null a choice)
    return out


def study_identity(base: PipelineSpec, base_params: Params, space: Mapping[str, Knob], objective_node: Any,
                   names: list[str], iqa_max_side: int, dataset: Dataset) -> dict[str, Any]:
    """What makes two runs of a study comparable; a resume must match it exactly.  (The device is
    left out on purpose: CPU and GPU workers may share a study; their outputs agree to ~1 LSB.)"""
    return {"schema": SCHEMA, "model": base.model.name, "face": base.face.name if base.face else "none",
            "pipeline": {"tile_pad": base.tile_pad, "pre_pad": base.pre_pad, "overlap": base.overlap,
                         "outscale": base.outscale, "blend_variant": base_params.blend_variant,
                         "face_upsample": base_params.face_upsample, "detector": base.detector,
                         "detection_threshold": base.detection_threshold, "half": base.half,
                         **({"texture_anchor": base_params.texture_anchor, "texture_predictor": PREDICTOR}
                            if base_params.texture_anchor != "lanczos" else {})},
            # the knobs that are not searched stay at these values
            "params": {**{k: getattr(base_params, k) for k in ("tile", "denoise", "face_weight", "blend")},
                       **({"texture_target": base_params.texture_target}
                          if base_params.texture_target is not None else {}),
                       **({"prefilter": base_params.prefilter} if base_params.prefilter else {})},
            "dataset_hash": dataset.content_hash, "max_side": dataset.max_side,
            "space_def": {k: asdict(v) for k, v in sorted(space.items())},
            "objective": objective_node, "metrics": list(names), "iqa_max_side": iqa_max_side}


def check_resume(prev: Mapping[str, Any], now: Mapping[str, Any], name: str) -> None:
    """Refuse to mix incomparable trials in one study."""
    if prev.get("schema") != now["schema"]:
        raise ConfigError(f"study '{name}' was written by another tuner version (schema {prev.get('schema')}, "
                          f"this is {now['schema']}); start a new study with a new study.name")
    # JSON round trip: what the storage gives back (tuples become lists, ...)
    now_j = json.loads(json.dumps(now, default=str))
    diff = [k for k in now_j if json.dumps(prev.get(k), sort_keys=True) != json.dumps(now_j[k], sort_keys=True)]
    if diff:
        what = {"space_def": "search space", "objective": "objective", "metrics": "metric set",
                "dataset_hash": "dataset", "max_side": "dataset.max_side", "model": "model", "face": "face",
                "pipeline": "pipeline options", "params": "fixed params", "iqa_max_side": "metrics.iqa_max_side"}
        raise ConfigError(
            f"study '{name}' exists with a different {', '.join(what.get(k, k) for k in diff)}: its trials would not "
            f"be comparable with new ones. Resume it with the same settings, or start a new study with a new "
            f"study.name (e.g. study.name={name}-2)"
        )


def run_tune(job: TuneJob) -> int:
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # WilcoxonPruner, heartbeat

    st, run_dir, objective, dataset = job.study, job.run_dir, job.objective, job.dataset
    if job.params.tile == "auto":
        raise ConfigError("params.tile=auto picks a tile per image from each machine's free memory, so a study's "
                          "workers could score different tiles and its preset would not reproduce: give params.tile "
                          "an integer (and search.params.tile choices)")
    names = validate.scored([*job.metric_names, *objective.metrics], job.validation)
    if objective.mode == "multi" and st.sampler in ("tpe", "gp") and st.pruner:
        log.info("multi-objective study: pruning is off (WilcoxonPruner is single-objective)")
    base, space, dropped = resolve_knobs(job.spec, dict(job.space), job.store, st.strict)
    log.info("study %s: %d image(s) at max_side=%s, searching %s", st.name, len(dataset.items), dataset.max_side,
             sorted(space))
    scorer = Scorer(names, iqa_max_side=job.iqa_max_side, detector=base.detector,
                    detection_threshold=base.detection_threshold, cache=job.cache)
    runner = TrialRunner(base=base, base_params=job.params, space=space, objective=objective, dataset=dataset,
                         scorer=scorer, store=job.store, cache=job.cache, score_threads=st.score_threads)
    multi = objective.mode == "multi"
    pruner = (optuna.pruners.WilcoxonPruner(p_threshold=st.p_threshold, n_startup_steps=st.n_startup_steps)
              if st.pruner and not multi else optuna.pruners.NopPruner())
    lock = StudyLock(st.storage, st.name)
    tracker = Tracker(enabled=job.tracking_enabled, uri=job.tracking_uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}",
                      experiment=job.experiment, artifact_dir=run_dir / "mlartifacts")
    ident = study_identity(base, job.params, space, job.objective_node, names, job.iqa_max_side, dataset)
    def open_study() -> tuple[Any, Any, str | None]:
        # under the lock: two workers creating a fresh storage at once race on its schema tables,
        # and two workers starting one study would both enqueue a baseline and a parent run
        with lock("storage-setup"):
            storage = make_storage(st)
            study = optuna.create_study(study_name=st.name, storage=storage, load_if_exists=True,
                                        directions=objective.directions,  # type: ignore[arg-type]
                                        sampler=make_sampler(st.sampler, space, seed=st.seed,
                                                             n_startup_trials=st.n_startup_trials),
                                        pruner=pruner)
            prev = study.user_attrs.get("tuner")
            if not prev:
                # trial 0 = the baseline: the configured params with the model exactly as shipped
                # (enqueued before "tuner" is set, so a retry after a dropped connection cannot skip it)
                bp = baseline_params(job.params, base, space)
                study.set_user_attr("baseline_params", bp)
                study.enqueue_trial(bp, user_attrs={"baseline": True}, skip_if_exists=True)
                study.set_user_attr("tuner", {**ident, "dataset": str(dataset.root), "n_images": len(dataset.items),
                                              "dropped_knobs": dropped, "space": sorted(space),
                                              "versions": versions()})
            else:
                check_resume(prev, ident, st.name)
            parent = tracker.start_study(
                study.user_attrs.get("mlflow_parent_run_id"), name=st.name,
                params={"model": base.model.name, "face": base.face.name if base.face else "none",
                        "n_images": len(dataset.items), "max_side": dataset.max_side,
                        "space": ",".join(sorted(space)), "dropped_knobs": "; ".join(dropped)},
                tags={"dataset_hash": dataset.content_hash, **{f"version.{k}": v for k, v in versions().items()}})
            if parent and not study.user_attrs.get("mlflow_parent_run_id"):
                study.set_user_attr("mlflow_parent_run_id", parent)
        return storage, study, parent

    held_out = runner.on(job.validation) if job.validation is not None and job.validation.items else None
    try:
        storage, study, parent = retrying(open_study, what="opening the study", seconds=st.storage_retry_s)
        worker_loop(study, storage, runner, st, objective, tracker, parent, lock, run_dir, job.contact_sheet_faces)
        return finish(study, st, objective, runner, tracker, parent, run_dir, lock, held_out)
    finally:
        runner.close()
        if held_out is not None:
            held_out.close()
        lock.close()


def _counts(trials: list[Any]) -> tuple[int, int, int]:
    """(done, running, all) of a study's ``trials``: COMPLETE + PRUNED trials count towards n_trials, failed
    ones do not; ``all`` is the number the next new trial gets."""
    from optuna.trial import TrialState

    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    return done, sum(t.state == TrialState.RUNNING for t in trials), len(trials)


@dataclass
class FailureTally:
    """This worker's own failed trials in this run (a resumed study starts afresh, and another
    worker's killed trial, failed by its heartbeat and re-queued, is not counted)."""

    consecutive: int = 0
    total: int = 0
    last_error: str = ""

    def add(self, failed: bool, reason: str, st: StudySettings) -> None:
        """Count one finished trial; stop the study when the failures pass the caps."""
        if not failed:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        self.last_error = reason or "no reason recorded"
        if self.consecutive >= st.max_consecutive_failures:
            raise StudyAborted(f"{self.consecutive} consecutive trials failed (study.max_consecutive_failures="
                               f"{st.max_consecutive_failures}); last error: {self.last_error}")
        if self.total >= st.max_failures:
            raise StudyAborted(f"{self.total} trials failed in all in this run (study.max_failures="
                               f"{st.max_failures}); last error: {self.last_error}")


def _next_trial(study: Any, storage: Any, lock: StudyLock, st: StudySettings, space: Mapping[str, Knob], hb: bool,
                bar: Any, asked: dict[str, Any]) -> tuple[str, int]:
    """Under the study lock: fail stale and orphaned trials, count, ask, and claim the trial (first
    heartbeat, ``worker`` attribute) before anyone else can count it ("stop", "wait", "run", or
    "again" when a retry finds its unclaimed trial failed meanwhile).
    The steps done go into ``asked``, so a retry after a dropped connection goes on from there
    rather than asking a second trial."""
    import optuna

    with lock():
        if "trial" not in asked:
            # after an outage other workers' heartbeats may have lapsed while they were alive: give
            # them a grace period to beat again before their trials count as stale
            if hb and not outage_within(st.grace_period):
                optuna.storages.fail_stale_trials(study)  # and re-queue them (RetryHeartbeatStaleTrialCallback)
            if lock.kind != "none":  # without a lock another worker's fresh trial may not be claimed yet
                recover_orphans(study, storage, st.max_retry)
            trials = study.get_trials(deepcopy=False)  # one read of the storage for the counts and the grid
            done, running, n_all = _counts(trials)
            bar.n = done
            bar.refresh()
            if done >= st.n_trials:
                return "stop", running
            if done + running >= st.n_trials or (hb and grid_taken(trials, st.sampler, space)):  # the last runs elsewhere
                return "wait", running
            # seeded by the trial's number (Optuna's samplers read the history from the storage,
            # so a fresh one per ask loses nothing)
            study.sampler = make_sampler(st.sampler, space, seed=trial_seed(st.seed, n_all),
                                         n_startup_trials=st.n_startup_trials)
            asked["trial"] = study.ask()
        try:
            if hb and "tid" not in asked:
                asked["tid"] = first_beat(storage, study, asked["trial"])
            if "claimed" not in asked:
                asked["trial"].set_user_attr("worker", worker_id())
                asked["trial"].set_user_attr("claimed", asked["trial"].number)
                asked["claimed"] = True
        except optuna.exceptions.UpdateFinishedTrialError:
            # a retry after the lock was lost: meanwhile another worker failed the unclaimed trial
            # as an orphan and re-queued it; start over
            asked.clear()
            return "again", 0
    return "run", 0


def worker_loop(study: Any, storage: Any, runner: TrialRunner, st: StudySettings, objective: O.Objective,
                tracker: Tracker, parent: str | None, lock: StudyLock, run_dir: Path, sheet_faces: int) -> None:
    import optuna
    from tqdm import tqdm

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # ask/tell with heartbeats: optuna warns that it expects Study.optimize, which cannot hold our lock
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    hb = heartbeat_enabled(storage)
    tally = FailureTally()
    bar = tqdm(total=st.n_trials, desc=f"study {st.name}", unit="trial")
    while True:
        asked: dict[str, Any] = {}  # survives a retry: a trial asked before the server dropped is not asked twice
        what, running = retrying(functools.partial(_next_trial, study, storage, lock, st, runner.space, hb, bar, asked),
                                 what="asking for a trial", seconds=st.storage_retry_s)
        if what == "stop":
            break
        if what == "again":
            continue
        if what == "wait":  # the last trials run elsewhere (or in a killed worker, until its heartbeat lapses)
            if not hb:
                log.warning("stopping: %d trial(s) still RUNNING and this storage has no heartbeats to fail them",
                            running)
                break
            time.sleep(max(1, min(st.heartbeat_interval, 5)))
            continue
        trial = asked["trial"]
        with Heartbeat(storage, asked["tid"], st.heartbeat_interval) if hb else contextlib.nullcontext():
            failed, reason = run_trial(study, trial, runner, objective, tracker, parent, run_dir, sheet_faces,
                                       st.n_startup_trials, retry_s=st.storage_retry_s)
        tally.add(failed, reason, st)
    bar.close()


def _claim_parent_log(study: Any, lock: StudyLock, best: int, n_finished: int) -> bool:
    """Under the lock: whether this worker logs the result to the study's MLflow run (the first
    worker to finish a study with this best trial and trial count does; the others do not)."""
    claim = {"best_trial": best, "n_finished": n_finished}
    with lock():
        if study.user_attrs.get("mlflow_result_logged") == claim:
            return False
        study.set_user_attr("mlflow_result_logged", claim)
        return True


def finish(study: Any, st: StudySettings, objective: O.Objective, runner: TrialRunner, tracker: Tracker,
           parent: str | None, run_dir: Path, lock: StudyLock, held_out: TrialRunner | None = None) -> int:
    from optuna.trial import TrialState

    states = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in
              (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    lines = [f"study: {st.name}", f"storage: {redact_url(st.storage)}", f"trials: {states}",
             f"dataset: {runner.dataset.root} ({len(runner.dataset.items)} images, max_side={runner.dataset.max_side})",
             f"searched: {sorted(runner.space)}",
             "constraints: per image (every image must hold; the worst image is shown) unless reduce: mean"]
    for d in study.user_attrs["tuner"].get("dropped_knobs", []):
        lines.append(f"DROPPED knob -- {d}")
    rc, claimed = 0, False
    try:
        trial, gates = retrying(lambda: best_trial(study, objective, allow_infeasible=st.allow_infeasible),
                                what="choosing the best trial", seconds=st.storage_retry_s)
        preset = retrying(lambda: build_preset(study, trial, gates, objective), what="building the preset",
                          seconds=st.storage_retry_s)
        path = presets.save(preset, run_dir / "best_preset.yaml")
        # the tuned outputs themselves (stage-cache hits): what `tuner enhance preset=...` must reproduce
        _, results = runner.evaluate(*runner.settings_of(trial))
        for item, res in zip(runner.dataset.items, results, strict=True):
            encode(res.image, run_dir / "best_outputs" / f"{item.name}.png")
            if runner.dataset.pairs is not None:  # the LRs it made (8-bit exact): enhance's inputs
                encode(item.image, run_dir / "inputs" / f"{item.name}.png")
        lines += [f"best trial: {trial.number} values={[round(v, 4) for v in trial.values]}",
                  f"params: {preset['params']}", f"constraints hold on every image: {holds(gates)}"]
        lines += [f"  {k}: " + (f"worst {v['value']} ({v['worst_image']})" if v.get("worst_image")
                                else f"{'mean' if 'mean' in v['reduce'] else 'worst'} {v['value']}")
                  + ("" if v["holds"] else "  VIOLATED") for k, v in preset["constraints"].items()]
        lines += ["metrics (image means): " + ", ".join(f"{k}={v:.3f}" for k, v in preset["metrics"].items()
                                                       if v is not None),
                  f"preset: {path}", f"tuned outputs: {run_dir / 'best_outputs'}"]
        # every worker writes the (same) preset beside it; MLflow's study run gets it once
        claimed = retrying(functools.partial(_claim_parent_log, study, lock, trial.number, sum(states.values())),
                           what="claiming the study's result", seconds=st.storage_retry_s)
        if claimed:
            tracker.log_parent(parent, metrics={"best_value": trial.values[0]}, artifacts=[path],
                               tags={"best_trial": str(trial.number)})
    except ConfigError as e:
        lines.append(f"no preset exported: {e}")
        rc = 1
    atomic_write_bytes(run_dir / "summary.txt", ("\n".join(lines) + "\n").encode())
    if rc == 0 and held_out is not None:  # does it transfer? scored by the worker that logged the result
        lines += validate.lines(study, objective, held_out, run_dir, trial, rerun=claimed)
        atomic_write_bytes(run_dir / "summary.txt", ("\n".join(lines) + "\n").encode())
    for line in lines:
        log.info("%s", line)
    if tracker.failures:
        log.warning("MLflow logging failed %d time(s); the study itself is complete", tracker.failures)
    return rc


