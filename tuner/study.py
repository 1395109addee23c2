"""`tuner tune` / `tuner export`: an Optuna study over the pipeline's knobs, driven directly.

- search space from ``conf/search/*.yaml`` (categorical / float / int, conditionals);
- one worker loop (ask/tell) that any number of processes or machines can run against
  one storage: SQLite (default, in the run directory), any RDB URL, or a Journal file;
- on local storages a file lock makes "count finished + running, then ask" atomic, so
  the study stops at exactly ``study.n_trials`` finished trials;
- heartbeats (RDB storages) fail the trials of killed workers, and
  RetryFailedTrialCallback re-queues them;
- per-image pruning with WilcoxonPruner (images in a per-trial shuffled order, reported
  under their fixed dataset index);
- the stage cache + per-input analyses + a metric memo make warm trials cheap;
- every trial is logged to MLflow (nested under the study's parent run);
- the best feasible trial is exported as a preset.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import PIPELINE_VERSION, __version__, search
from . import objective as O
from . import preset as presets
from .cache import StageCache
from .config import check_keys, dataset_from_cfg, metric_settings, pipeline_config, to_dict
from .dataset import Dataset
from .errors import ConfigError, TunerError
from .export import SCHEMA, _holds, best_trial, build_preset
from .images import atomic_write_bytes, encode, from_array
from .pipeline import Params, Pipeline, PipelineSpec, Result
from .scoring import Scorer
from .search import Knob, make_sampler, resolve_knobs, search_space
from .storage import (
    StudySettings,
    file_lock,
    heartbeat,
    heartbeat_enabled,
    make_storage,
    redact_url,
    storage_lock_path,
    study_settings,
)
from .tracking import Tracker
from .weights import WeightStore, catalogue, content_hash

log = logging.getLogger("tuner")


# ---------------------------------------------------------------- the trial runner
class TrialRunner:
    """Evaluates one trial's settings over the dataset: pipeline -> scoring -> objective."""

    def __init__(self, *, base: PipelineSpec, base_params: Params, space: Mapping[str, Knob], objective: O.Objective,
                 dataset: Dataset, scorer: Scorer, store: WeightStore, cache: StageCache | None) -> None:
        self.base = base
        self.base_params = base_params
        self.space = dict(space)
        self.objective = objective
        self.dataset = dataset
        self.scorer = scorer
        self.metric_names = scorer.names
        self.store = store
        self.cache = cache
        self._pipelines: dict[str, Pipeline] = {}
        self.models = catalogue("model")

    def pipeline(self, spec: PipelineSpec) -> Pipeline:
        key = json.dumps(asdict(spec), sort_keys=True, default=str)
        if key not in self._pipelines:
            self._pipelines[key] = Pipeline(spec, store=self.store, cache=self.cache)
        return self._pipelines[key]

    def suggest(self, trial: Any) -> tuple[PipelineSpec, Params]:
        return search.suggest(trial, self.space, self.base, self.base_params, self.models)

    def spec_for(self, trial: Any) -> PipelineSpec:
        return search.spec_for(trial, self.base, self.models)

    def evaluate(self, spec: PipelineSpec, params: Params, *, order: list[int] | None = None,
                 report: Any = None) -> tuple[list[dict[str, Any]], list[Result]]:
        """Run and score every image (in ``order``); ``report(value, index)`` may raise TrialPruned."""
        pipe = self.pipeline(spec)
        rows, results = [], []
        for idx in order if order is not None else range(len(self.dataset.items)):
            item = self.dataset.items[idx]
            res = pipe.run(item.image, params)
            vals, extra = self.scorer.score(res, self.scorer.analysis(item, res, pipe))
            row = {"image": item.name, "index": idx, "tile": res.tile, **vals, **extra,
                   "objective": self.objective.per_image(vals)}
            rows.append(row)
            results.append(res)
            if report is not None:
                report(row["objective"], idx)
        return rows, results


# ---------------------------------------------------------------- run


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"tuner": __version__, "pipeline_version": PIPELINE_VERSION}
    for pkg in ("torch", "optuna", "realesrgan", "gfpgan", "basicsr", "pyiqa", "mlflow", "opencv-python", "numpy"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


class StudyAborted(TunerError):
    """The study stopped itself: trials keep failing (the message gives the last error)."""


def baseline_params(base: Params, base_spec: PipelineSpec, space: Mapping[str, Knob]) -> dict[str, Any]:
    """Trial 0's values: the configured params, with ``denoise`` at the value that runs the
    model exactly as shipped (DNI weight 1 on the model itself) when denoise is searched."""
    out: dict[str, Any] = {"tile": base.tile, "denoise": base.denoise, "face_weight": base.face_weight,
                           "blend": base.blend}
    if "denoise" in space and out["denoise"] is None:
        out["denoise"] = 1.0 if base_spec.model.denoise_weight_on == "base" else 0.0
    return {k: v for k, v in out.items() if k in space and v is not None}


def study_identity(base: PipelineSpec, base_params: Params, space: Mapping[str, Knob], objective_node: Any,
                   names: list[str], iqa_max_side: int, dataset: Dataset) -> dict[str, Any]:
    """What makes two runs of a study comparable; a resume must match it exactly.  (The device is
    left out on purpose: CPU and GPU workers may share a study; their outputs agree to ~1 LSB.)"""
    return {"schema": SCHEMA, "model": base.model.name, "face": base.face.name if base.face else "none",
            "pipeline": {"tile_pad": base.tile_pad, "pre_pad": base.pre_pad, "overlap": base.overlap,
                         "outscale": base.outscale, "blend_variant": base.blend_variant,
                         "face_upsample": base.face_upsample, "detector": base.detector,
                         "detection_threshold": base.detection_threshold, "half": base.half},
            "params": asdict(base_params),  # the knobs that are not searched stay at these values
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


def run_tune(cfg: Any) -> int:
    import optuna
    from hydra.core.hydra_config import HydraConfig

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # WilcoxonPruner, heartbeat

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    # ---- validate everything before any model loads
    st = study_settings(cfg, run_dir)
    pc = pipeline_config(cfg)
    space = search_space(to_dict(cfg.search) or {})
    if pc.params.tile == "auto":
        raise ConfigError("params.tile=auto picks a tile per image from each machine's free memory, so a study's "
                          "workers could score different tiles and its preset would not reproduce: give params.tile "
                          "an integer (and search.params.tile choices)")
    objective = O.from_mapping(to_dict(cfg.objective) or {})
    names, iqa_side = metric_settings(cfg)
    names = list(dict.fromkeys([*names, *objective.metrics]))
    tracking = to_dict(cfg.tracking) or {}
    check_keys(tracking, {"enabled", "uri", "experiment", "contact_sheet_faces"}, "tracking")
    if objective.mode == "multi" and st.sampler in ("tpe", "gp") and st.pruner:
        log.info("multi-objective study: pruning is off (WilcoxonPruner is single-objective)")
    dataset = dataset_from_cfg(cfg)
    base, space, dropped = resolve_knobs(pc.spec, space, pc.store, st.strict)
    log.info("study %s: %d image(s) at max_side=%s, searching %s", st.name, len(dataset.items), dataset.max_side,
             sorted(space))
    scorer = Scorer(names, iqa_max_side=iqa_side, detector=base.detector,
                    detection_threshold=base.detection_threshold, cache=pc.cache)
    runner = TrialRunner(base=base, base_params=pc.params, space=space, objective=objective, dataset=dataset,
                         scorer=scorer, store=pc.store, cache=pc.cache)
    multi = objective.mode == "multi"
    pruner = (optuna.pruners.WilcoxonPruner(p_threshold=st.p_threshold, n_startup_steps=st.n_startup_steps)
              if st.pruner and not multi else optuna.pruners.NopPruner())
    lock_path = storage_lock_path(st.storage)
    tracker = Tracker(enabled=bool(tracking.get("enabled", True)),
                      uri=str(os.environ.get("MLFLOW_TRACKING_URI") or tracking.get("uri")
                              or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"),
                      experiment=str(tracking.get("experiment") or "tuner"), artifact_dir=run_dir / "mlartifacts")
    ident = study_identity(base, pc.params, space, to_dict(cfg.objective), names, iqa_side, dataset)
    with file_lock(lock_path) if lock_path else contextlib.nullcontext():
        # under the lock: two workers creating a fresh SQLite storage at once race on its schema tables
        storage = make_storage(st)
        study = optuna.create_study(study_name=st.name, storage=storage, load_if_exists=True,
                                    directions=objective.directions,  # type: ignore[arg-type]
                                    sampler=make_sampler(st.sampler, space, seed=st.seed, n_startup_trials=st.n_startup_trials),
                                    pruner=pruner)
        prev = study.user_attrs.get("tuner")
        if not prev:
            study.set_user_attr("tuner", {**ident, "dataset": str(dataset.root), "n_images": len(dataset.items),
                                          "dropped_knobs": dropped, "space": sorted(space), "versions": versions()})
            # trial 0 = the baseline: the configured params with the model exactly as shipped
            bp = baseline_params(pc.params, base, space)
            study.set_user_attr("baseline_params", bp)
            study.enqueue_trial(bp, user_attrs={"baseline": True}, skip_if_exists=True)
        else:
            check_resume(prev, ident, st.name)
        parent = tracker.start_study(study.user_attrs.get("mlflow_parent_run_id"), name=st.name,
                                     params={"model": base.model.name, "face": base.face.name if base.face else "none",
                                             "n_images": len(dataset.items), "max_side": dataset.max_side,
                                             "space": ",".join(sorted(space)), "dropped_knobs": "; ".join(dropped)},
                                     tags={"dataset_hash": dataset.content_hash, **{f"version.{k}": v for k, v in
                                                                                    versions().items()}})
        if parent and not study.user_attrs.get("mlflow_parent_run_id"):
            study.set_user_attr("mlflow_parent_run_id", parent)
    worker_loop(study, storage, runner, st, objective, tracker, parent, lock_path, run_dir,
                int(tracking.get("contact_sheet_faces", 6)))
    return finish(study, st, objective, runner, tracker, parent, run_dir)


def _counts(study: Any) -> tuple[int, int]:
    """(done, running): COMPLETE + PRUNED trials count towards n_trials; failed ones do not."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    done = sum(t.state != TrialState.RUNNING for t in trials)
    return done, len(trials) - done


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


def worker_loop(study: Any, storage: Any, runner: TrialRunner, st: StudySettings, objective: O.Objective,
                tracker: Tracker, parent: str | None, lock_path: Path | None, run_dir: Path, sheet_faces: int) -> None:
    import optuna
    from tqdm import tqdm

    # ask/tell with optuna's heartbeat helpers (Study.optimize cannot take our lock around ask)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    hb = heartbeat_enabled(storage)
    tally = FailureTally()
    bar = tqdm(total=st.n_trials, desc=f"study {st.name}", unit="trial")
    while True:
        with file_lock(lock_path) if lock_path else contextlib.nullcontext():
            if hb:
                optuna.storages.fail_stale_trials(study)  # and re-queue them (RetryHeartbeatStaleTrialCallback)
            done, running = _counts(study)
            bar.n = done
            bar.refresh()
            if done >= st.n_trials:
                break
            trial = None if done + running >= st.n_trials else study.ask()
        if trial is None:  # the last trials run elsewhere (or in a killed worker, until its heartbeat lapses)
            if not hb:
                log.warning("stopping: %d trial(s) still RUNNING and this storage has no heartbeats to fail them",
                            running)
                break
            time.sleep(max(1, min(st.heartbeat_interval, 5)))
            continue
        with heartbeat(storage, study, trial) if hb else contextlib.nullcontext():
            failed, reason = run_trial(study, trial, runner, objective, tracker, parent, run_dir, sheet_faces,
                                       st.n_startup_trials)
        tally.add(failed, reason, st)
    bar.close()


def run_trial(study: Any, trial: Any, runner: TrialRunner, objective: O.Objective, tracker: Tracker,
              parent: str | None, run_dir: Path, sheet_faces: int, n_startup: int) -> tuple[bool, str]:
    """Run one trial and tell the study; returns (failed, reason)."""
    import optuna
    from optuna.trial import TrialState

    t0 = time.perf_counter()
    tdir = run_dir / "trials" / f"{trial.number:04d}"
    state, values, reason = TrialState.FAIL, None, ""
    rows: list[dict[str, Any]] = []
    try:
        spec, params = runner.suggest(trial)
        order = list(range(len(runner.dataset.items)))
        random.Random(trial.number).shuffle(order)
        multi = objective.mode == "multi"

        reported = [0]
        # no pruning until the sampler's startup trials have completed: a lone early best trial
        # would otherwise prune every exploratory trial and starve the sampler of full results
        n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        is_baseline = bool(trial.user_attrs.get("baseline"))
        may_prune = not multi and not is_baseline and n_complete >= n_startup

        def report(v: float, idx: int) -> None:
            if multi or math.isnan(v):
                return
            trial.report(v, step=idx)
            reported[0] += 1
            if may_prune and trial.should_prune():
                raise optuna.TrialPruned(f"WilcoxonPruner: worse than the best trial after {reported[0]} image(s)")

        rows, results = runner.evaluate(spec, params, order=order, report=report)
        values = objective.values(rows)
        if any(math.isnan(v) for v in values):
            raise TunerError("objective is NaN on every image (no metric applied); check objective.terms")
        per_image = per_image_values(rows, [c.metric for c in objective.constraints])
        if is_baseline:
            study.set_user_attr("baseline", per_image)
        gates = objective.gates(rows, ensure_baseline(study, runner, objective))
        cons = [g.violation for g in gates]
        means = O.means(rows, runner.metric_names)
        trial.set_user_attr("metrics", {k: (None if math.isnan(v) else round(v, 6)) for k, v in means.items()})
        trial.set_user_attr("per_image", per_image)
        # what each gate saw: the worst image's value (reduce=worst), so MLflow shows what decided
        trial.set_user_attr("gate_values", {f"gate.{c.metric}": (None if math.isnan(g.value) else round(g.value, 6))
                                            for c, g in zip(objective.constraints, gates, strict=True)})
        trial.set_user_attr("constraints", cons)
        for c, v in zip(objective.constraints, cons, strict=True):
            trial.set_constraint(c.describe(), v)  # constraint-aware samplers (TPE, GP, NSGA-II) read these
        trial.set_user_attr("feasible", all(c <= 0 for c in cons))
        trial.set_user_attr("spec", {"model": spec.model.name, "blend_variant": spec.blend_variant,
                                     "face_upsample": spec.face_upsample, "overlap": spec.overlap})
        trial.set_user_attr("params_full", {"tile": params.tile, "denoise": params.denoise,
                                            "face_weight": params.face_weight, "blend": params.blend})
        trial.set_user_attr("model_identity", runner.pipeline(spec).model_identity(params.denoise))
        trial.set_user_attr("face_sha256", content_hash(runner.store.resolve(spec.face)) if spec.face else None)
        state = TrialState.COMPLETE
        _trial_artifacts(tdir, rows, results, sheet_faces)
    except optuna.TrialPruned as e:
        state, reason = TrialState.PRUNED, str(e)
    except TunerError as e:
        reason = f"{e.__class__.__name__}: {e}"
        log.error("trial %d failed: %s", trial.number, reason)
    except Exception as e:  # a bug or an unexpected library error: fail this trial loudly, with its traceback
        reason = f"{e.__class__.__name__}: {e}"
        log.exception("trial %d failed unexpectedly: %s", trial.number, reason)
    finally:
        if reason:
            with contextlib.suppress(Exception):
                trial.set_user_attr("reason", reason)
        elapsed = time.perf_counter() - t0
        with contextlib.suppress(Exception):
            trial.set_user_attr("seconds", round(elapsed, 3))
        if state == TrialState.COMPLETE:
            study.tell(trial, values)
        else:
            study.tell(trial, state=state)
    if rows:
        atomic_write_bytes(tdir / "metrics.csv", pd.DataFrame(rows).to_csv(index=False).encode())
    arts = [p for p in (tdir / "metrics.csv", tdir / "faces.png") if p.exists()]
    means = trial.user_attrs.get("metrics", {}) if state == TrialState.COMPLETE else {}
    tracker.log_trial(parent, number=trial.number, params=trial.params,
                      metrics={**{k: v for k, v in means.items() if v is not None},
                               **{k: v for k, v in (trial.user_attrs.get("gate_values") or {}).items()
                                  if v is not None and state == TrialState.COMPLETE},
                               **({"objective": values[0]} if values and len(values) == 1 else {}),
                               "seconds": elapsed},
                      tags={"state": state.name, "reason": reason[:500], "dataset_hash": runner.dataset.content_hash,
                            "model_sha256": ",".join(s for _, s, _ in trial.user_attrs.get("model_identity", [])),
                            "feasible": str(trial.user_attrs.get("feasible", ""))},
                      artifacts=arts, status=state.name)
    log.info("trial %d %s in %.1fs %s %s", trial.number, state.name, elapsed, trial.params,
             "" if values is None else f"values={[round(v, 4) for v in values]}")
    return state == TrialState.FAIL, reason


def per_image_values(rows: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, float | None]]:
    """{metric: {image: value}} (None for NaN: JSON has no NaN) -- what the per-image gates read."""
    out: dict[str, dict[str, float | None]] = {}
    for n in dict.fromkeys(names):
        out[n] = {}
        for r in rows:
            v = r.get(n)
            out[n][str(r["image"])] = None if v is None or math.isnan(float(v)) else round(float(v), 6)
    return out


def ensure_baseline(study: Any, runner: TrialRunner, objective: O.Objective) -> dict[str, Any] | None:
    """The baseline trial's per-image values; recomputed (from cached stages) when trial 0 has
    not finished, failed or was lost, so a relative gate is never silently off."""
    baseline = study.user_attrs.get("baseline")
    if baseline is not None or not objective.needs_baseline():
        return baseline
    bp = {**asdict(runner.base_params), **study.user_attrs.get("baseline_params", {})}
    log.info("baseline values missing (trial 0 not finished); computing them with %s", bp)
    rows, _ = runner.evaluate(runner.base, Params.from_mapping(bp))
    baseline = per_image_values(rows, [c.metric for c in objective.constraints])
    study.set_user_attr("baseline", baseline)
    return baseline


def _trial_artifacts(tdir: Path, rows: list[dict[str, Any]], results: list[Result], n_faces: int) -> None:
    """A contact sheet of 100% face crops (output pixels, no resampling)."""
    crops: list[np.ndarray] = []
    # dataset order (not the trial's shuffled order), so sheets of different trials line up
    for _, res in sorted(zip([r["index"] for r in rows], results, strict=True), key=lambda p: p[0]):
        if len(crops) >= n_faces or not res.faces:
            continue
        f = res.faces[0].scaled(res.scale)
        cx, cy = int((f.box[0] + f.box[2]) / 2), int((f.box[1] + f.box[3]) / 2)
        h, w = res.image.rgb.shape[:2]
        s = 128
        x0, y0 = min(max(cx - s // 2, 0), max(w - s, 0)), min(max(cy - s // 2, 0), max(h - s, 0))
        c = np.zeros((s, s, 3), np.float32)
        part = res.image.rgb[y0 : y0 + s, x0 : x0 + s]
        c[: part.shape[0], : part.shape[1]] = part
        crops.append(c)
    if crops:
        tdir.mkdir(parents=True, exist_ok=True)
        encode(from_array(np.concatenate(crops, axis=1)), tdir / "faces.png")


def finish(study: Any, st: StudySettings, objective: O.Objective, runner: TrialRunner, tracker: Tracker,
           parent: str | None, run_dir: Path) -> int:
    from optuna.trial import TrialState

    states = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in
              (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    lines = [f"study: {st.name}", f"storage: {redact_url(st.storage)}", f"trials: {states}",
             f"dataset: {runner.dataset.root} ({len(runner.dataset.items)} images, max_side={runner.dataset.max_side})",
             f"searched: {sorted(runner.space)}",
             "constraints: per image (every image must hold; the worst image is shown) unless reduce: mean"]
    for d in study.user_attrs["tuner"].get("dropped_knobs", []):
        lines.append(f"DROPPED knob -- {d}")
    rc = 0
    try:
        trial, gates = best_trial(study, objective, allow_infeasible=st.allow_infeasible)
        preset = build_preset(study, trial, gates, objective)
        path = presets.save(preset, run_dir / "best_preset.yaml")
        # the tuned outputs themselves (stage-cache hits): what `tuner enhance preset=...` must reproduce
        _, results = runner.evaluate(runner.spec_for(trial), Params.from_mapping(trial.user_attrs["params_full"]))
        for item, res in zip(runner.dataset.items, results, strict=True):
            encode(res.image, run_dir / "best_outputs" / f"{item.name}.png")
        lines += [f"best trial: {trial.number} values={[round(v, 4) for v in trial.values]}",
                  f"params: {preset['params']}", f"constraints hold on every image: {_holds(gates)}"]
        lines += [f"  {k}: " + (f"worst {v['value']} ({v['worst_image']})" if v.get("worst_image")
                                else f"{'mean' if 'mean' in v['reduce'] else 'worst'} {v['value']}")
                  + ("" if v["holds"] else "  VIOLATED") for k, v in preset["constraints"].items()]
        lines += ["metrics (image means): " + ", ".join(f"{k}={v:.3f}" for k, v in preset["metrics"].items()
                                                       if v is not None),
                  f"preset: {path}", f"tuned outputs: {run_dir / 'best_outputs'}"]
        tracker.log_parent(parent, metrics={"best_value": trial.values[0]}, artifacts=[path],
                           tags={"best_trial": str(trial.number)})
    except ConfigError as e:
        lines.append(f"no preset exported: {e}")
        rc = 1
    atomic_write_bytes(run_dir / "summary.txt", ("\n".join(lines) + "\n").encode())
    for line in lines:
        log.info("%s", line)
    if tracker.failures:
        log.warning("MLflow logging failed %d time(s); the study itself is complete", tracker.failures)
    return rc


