"""One trial: draw its settings, run the pipeline on every image, score, gate and tell Optuna.

``TrialRunner`` holds what trials share (pipelines per spec, the scorer with its per-input
analyses and metric memo); ``run_trial`` runs one asked trial, records its per-image values
(what the gates and the export read), its artifacts and its MLflow run.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import objective as O
from . import search
from .cache import StageCache
from .dataset import Dataset
from .errors import ConfigError, TunerError
from .files import atomic_write_bytes
from .images import encode, from_array
from .memory import scoring_slots
from .pipeline import Params, Pipeline, PipelineSpec, Result
from .scoring import Scorer
from .search import Knob
from .settings import Settings
from .storage import StorageLost, redact_url, retrying
from .tracking import Tracker
from .weights import WeightStore, catalogue, content_hash

log = logging.getLogger("tuner")


class TrialRunner:
    """Evaluates one trial's settings over the dataset: pipeline -> scoring -> objective."""

    def __init__(self, *, base: PipelineSpec, base_params: Params, space: Mapping[str, Knob], objective: O.Objective,
                 dataset: Dataset, scorer: Scorer, store: WeightStore, cache: StageCache | None,
                 score_threads: int = 1) -> None:
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
        self.faces = catalogue("face")
        if score_threads < 1:
            raise ConfigError(f"study.score_threads must be >= 1, got {score_threads}")
        self.score_threads = score_threads
        self._pool: ThreadPoolExecutor | None = None  # started on the first threaded evaluate

    def on(self, dataset: Dataset) -> TrialRunner:
        """A runner over ``dataset`` sharing this one's pipelines (and their memos) and scorer."""
        other = copy.copy(self)
        other.dataset, other._pool = dataset, None
        return other

    def pipeline(self, spec: PipelineSpec) -> Pipeline:
        key = json.dumps(asdict(spec), sort_keys=True, default=str)
        if key not in self._pipelines:
            self._pipelines[key] = Pipeline(spec, store=self.store, cache=self.cache)
        return self._pipelines[key]

    def suggest(self, trial: Any) -> tuple[PipelineSpec, Params]:
        return search.suggest(trial, self.space, self.base, self.base_params, self.models)

    def settings_of(self, trial: Any) -> tuple[PipelineSpec, Params]:
        """The pipeline spec and params a finished trial used, from its recorded settings."""
        st = Settings.from_dict(trial.user_attrs["settings"], where=f"trial {trial.number}")
        return st.spec(self.base, self.models, self.faces), st.params

    def evaluate(self, spec: PipelineSpec, params: Params, *, order: list[int] | None = None,
                 report: Any = None, threads: int | None = None) -> tuple[list[dict[str, Any]], list[Result]]:
        """Run and score every image (in ``order``); ``report(value, index)`` may raise TrialPruned.

        The pipeline runs one image at a time (its memory plan is per image); with
        ``score_threads`` > 1 up to that many finished outputs are scored at once in threads
        (numpy, OpenCV and torch release the GIL) -- fewer where the outputs are so large that
        they would not fit the memory budget beside the next image's run
        (:func:`tuner.memory.scoring_slots`) -- and results are taken in ``order``, so rows,
        reports and pruning are the same as with one thread.  ``threads`` (at most
        ``score_threads``) overrides it for this call, e.g. 1 to profile the scoring.
        """
        threads = self.score_threads if threads is None else max(1, min(threads, self.score_threads))
        if threads > 1 and self._pool is None:
            self._pool = ThreadPoolExecutor(self.score_threads, thread_name_prefix="score")
        pipe = self.pipeline(spec)
        rows, results = [], []
        pending: deque[tuple[int, Result | None, Future[Any]]] = deque()
        slots = threads  # fewer where large outputs would not fit the memory budget

        def take() -> None:
            idx, res, fut = pending.popleft()
            vals, extra = fut.result()  # raises this image's failure, in order
            assert res is not None
            row = {"image": self.dataset.items[idx].name, "index": idx, "tile": res.tile, **vals, **extra,
                   "objective": self.objective.per_image(vals)}
            rows.append(row)
            results.append(res)
            if report is not None:
                report(row["objective"], idx)

        try:
            for idx in order if order is not None else range(len(self.dataset.items)):
                item = self.dataset.items[idx]
                fut: Future[Any] = Future()
                try:
                    res = pipe.run(item.image, params)
                    if res.plan is not None:
                        slots = min(slots, scoring_slots(res.plan, threads))
                    analysis = self.scorer.analysis(item, res, pipe)
                    if threads == 1 or self._pool is None:  # (the pool exists when threads > 1)
                        fut.set_result(self.scorer.score(res, analysis))
                    else:
                        fut = self._pool.submit(self.scorer.score, res, analysis)
                except Exception as e:  # raised when its turn comes: an earlier image may prune the trial first
                    fut.set_exception(e)
                    res = None
                pending.append((idx, res, fut))
                while len(pending) >= slots:
                    take()
            while pending:
                take()
        finally:  # pruned or failed: cancel what has not started, and let what has finish here
            for _, _, fut in pending:
                fut.cancel()
            wait([fut for _, _, fut in pending])
        return rows, results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def run_trial(study: Any, trial: Any, runner: TrialRunner, objective: O.Objective, tracker: Tracker,
              parent: str | None, run_dir: Path, sheet_faces: int, n_startup: int,
              retry_s: float = 0.0) -> tuple[bool, str]:
    """Run one trial and tell the study; returns (failed, reason).  Storage calls are retried for
    ``retry_s`` seconds while the storage is unreachable (a database server restarting), so an
    outage shorter than that loses no computed trial."""
    import optuna
    from optuna.trial import TrialState

    def again(fn: Any, what: str) -> Any:
        return retrying(fn, what=f"trial {trial.number}: {what}", seconds=retry_s)

    if again(lambda: search.grid_repeat(study, trial.number), "grid check"):
        # counted as done (pruned) without running, so the study reaches study.n_trials and exports
        reason = "not run: every point of the grid (study.sampler=grid) has run; study.n_trials exceeds the grid"
        log.warning("trial %d %s", trial.number, reason)
        again(lambda: trial.set_user_attr("reason", reason), "record")
        return not tell(study, trial, TrialState.PRUNED, None, retry_s), reason

    t0 = time.perf_counter()
    tdir = run_dir / "trials" / f"{trial.number:04d}"
    state, values, reason = TrialState.FAIL, None, ""
    rows: list[dict[str, Any]] = []
    dropped = lost = False
    try:
        spec, params = again(lambda: runner.suggest(trial), "suggest")
        order = list(range(len(runner.dataset.items)))
        random.Random(trial.number).shuffle(order)
        multi = objective.mode == "multi"

        reported = [0]
        # no pruning until the sampler's startup trials have completed: a lone early best trial
        # would otherwise prune every exploratory trial and starve the sampler of full results
        n_complete = len(again(lambda: study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), "count"))
        is_baseline = bool(trial.user_attrs.get("baseline"))
        may_prune = not multi and not is_baseline and n_complete >= n_startup

        def report(v: float, idx: int) -> None:
            if multi or math.isnan(v):
                return
            again(lambda: trial.report(v, step=idx), "report")
            reported[0] += 1
            if may_prune and again(trial.should_prune, "prune check"):
                raise optuna.TrialPruned(f"WilcoxonPruner: worse than the best trial after {reported[0]} image(s)")

        rows, results = runner.evaluate(spec, params, order=order, report=report)
        values = objective.values(rows)
        if any(math.isnan(v) for v in values):
            raise TunerError("objective is NaN on every image (no metric applied); check objective.terms")
        per_image = per_image_values(rows, [c.metric for c in objective.constraints])
        if is_baseline:
            again(lambda: study.set_user_attr("baseline", per_image), "record the baseline")
        gates = objective.gates(rows, again(lambda: ensure_baseline(study, runner, objective), "baseline"))
        cons = [g.violation for g in gates]
        means = O.means(rows, runner.metric_names)
        attrs = {
            "metrics": {k: (None if math.isnan(v) else round(v, 6)) for k, v in means.items()},
            "per_image": per_image,
            # what each gate saw: the worst image's value (reduce=worst), so MLflow shows what decided
            "gate_values": {f"gate.{c.metric}": (None if math.isnan(g.value) else round(g.value, 6))
                            for c, g in zip(objective.constraints, gates, strict=True)},
            "constraints": cons,
            "feasible": all(c <= 0 for c in cons),
            "settings": Settings.of(spec, params).to_dict(),  # the one schema a preset takes
            "model_identity": runner.pipeline(spec).model_identity(params.denoise),
            "face_sha256": content_hash(runner.store.resolve(spec.face)) if spec.face else None,
        }

        def record() -> None:
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            for c, v in zip(objective.constraints, cons, strict=True):
                trial.set_constraint(c.describe(), v)  # constraint-aware samplers (TPE, GP, NSGA-II) read these

        again(record, "record results")
        state = TrialState.COMPLETE
        _trial_artifacts(tdir, rows, results, sheet_faces)
    except optuna.TrialPruned as e:
        state, reason = TrialState.PRUNED, str(e)
    except optuna.exceptions.UpdateFinishedTrialError:
        # failed as stale by another worker (this one was silent past the grace period) and re-queued
        dropped, reason = True, "failed as stale by another worker while it ran (re-queued up to study.max_retry times)"
        log.warning("trial %d: %s", trial.number, reason)
    except StorageLost:
        lost = True  # the worker stops (the caller reports it); the trial stays RUNNING for its heartbeat
        raise
    except TunerError as e:
        reason = f"{e.__class__.__name__}: {redact_url(str(e))}"
        log.error("trial %d failed: %s", trial.number, reason)
    except Exception as e:  # a bug or an unexpected library error: fail this trial loudly, with its traceback
        reason = f"{e.__class__.__name__}: {redact_url(str(e))}"
        log.exception("trial %d failed unexpectedly: %s", trial.number, reason)
    finally:
        elapsed = time.perf_counter() - t0
        if not dropped and not lost:
            extra = {"seconds": round(elapsed, 3), **({"reason": reason} if reason else {})}
            try:  # optuna refuses writes to a finished trial: the check that it is still ours
                again(lambda: [trial.set_user_attr(k, v) for k, v in extra.items()], "record")
            except optuna.exceptions.UpdateFinishedTrialError:
                dropped = True
                log.warning("trial %d: failed as stale by another worker while it ran; its result is dropped "
                            "(the trial is re-queued up to study.max_retry times)", trial.number)
        if not dropped and not lost:
            dropped = not tell(study, trial, state, values, retry_s)
    if dropped:  # counted as a failure all the same: a cause that kept recurring must stop the study
        return True, reason or "failed as stale by another worker"
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


def tell(study: Any, trial: Any, state: Any, values: list[float] | None, retry_s: float) -> bool:
    """Tell the study, retrying while the storage is unreachable.  False when the trial had been
    finished otherwise: this worker was silent past the heartbeat grace period, so another worker
    failed the trial and re-queued a copy (an outage longer than the grace period).  A tell that
    landed before the connection dropped, and is retried, is recognised as our own.  (A FAIL told
    onto a trial failed as stale is indistinguishable here: run_trial's last write, refused on a
    finished trial, catches that case first.)"""
    import optuna
    from optuna.trial import TrialState

    def go() -> Any:
        try:
            if state == TrialState.COMPLETE:
                return study.tell(trial, values, skip_if_finished=True)
            return study.tell(trial, state=state, skip_if_finished=True)
        except RuntimeError as e:
            # GridSampler calls study.stop() once the last point of the grid has run, which outside
            # Study.optimize raises; the trial's state and values are stored before that (optuna
            # writes them in a finally), so the tell itself is done
            if not (isinstance(study.sampler, optuna.samplers.GridSampler) and "Study.stop" in str(e)):
                raise
            log.debug("trial %d: every point of the grid (study.sampler=grid) has now run", trial.number)
            return next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)

    now = retrying(go, what=f"telling trial {trial.number}", seconds=retry_s)
    if now.state == state and (state != TrialState.COMPLETE or list(now.values or []) == list(values or [])):
        return True
    log.warning("trial %d: finished elsewhere (%s, failed as stale by another worker) before this worker could "
                "tell it; its result is dropped (the trial is re-queued up to study.max_retry times)", trial.number,
                now.state.name)
    return False


def per_image_values(rows: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, float | None]]:
    """{metric: {image: value}} (None for NaN: JSON has no NaN) -- what the per-image gates read."""
    out: dict[str, dict[str, float | None]] = {}
    for n in dict.fromkeys(names):
        out[n] = {}
        for r in rows:
            v = r.get(n)
            out[n][str(r["image"])] = None if v is None or math.isnan(float(v)) else O.stored(float(v))
    return out


def baseline_settings(study: Any, runner: TrialRunner) -> Params:
    """Trial 0's params: the configured ones with the searched knobs at their baseline values."""
    return Params(**{**asdict(runner.base_params), **study.user_attrs.get("baseline_params", {})})


def ensure_baseline(study: Any, runner: TrialRunner, objective: O.Objective) -> dict[str, Any] | None:
    """The baseline trial's per-image values; recomputed (from cached stages) when trial 0 has
    not finished, failed or was lost, so a relative gate is never silently off."""
    baseline = study.user_attrs.get("baseline")
    if baseline is not None or not objective.needs_baseline():
        return baseline
    bp = baseline_settings(study, runner)
    log.info("baseline values missing (trial 0 not finished); computing them with %s", bp)
    rows, _ = runner.evaluate(runner.base, bp)
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
