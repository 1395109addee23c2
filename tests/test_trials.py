"""TrialRunner: scoring in threads changes nothing but the time, pruning included; run_trial's
pruning rules (the baseline never, nothing before n_startup completed trials, NaN never reported)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from conftest import TINY_SRVGG
from optuna.trial import TrialState, create_trial

from tuner import objective as O
from tuner.cache import StageCache
from tuner.dataset import load as load_dataset
from tuner.errors import ConfigError, PipelineError
from tuner.pipeline import Params, PipelineSpec
from tuner.scoring import Scorer
from tuner.tracking import Tracker
from tuner.trials import TrialRunner, run_trial
from tuner.weights import ModelSpec, WeightStore

NAMES = ["piqe", "crunch", "wax", "edge_halo", "lr_psnr", "identity", "delta_e_skin"]


class Pruned(Exception):
    pass


def _runner(tiny_weights, tmp_path, threads):
    model = ModelSpec.from_mapping({"name": "realesr-general-x4v3", "arch": TINY_SRVGG, "key": "params"})
    cache = StageCache(tmp_path / f"cache{threads}")
    scorer = Scorer(NAMES, iqa_max_side=1024, detector="retinaface", detection_threshold=0.9, cache=cache)
    objective = O.from_mapping({"mode": "composite", "terms": [{"metric": "piqe", "weight": 1.0, "scale": 10.0}]})
    return TrialRunner(base=PipelineSpec(model=model), base_params=Params(), space={}, objective=objective,
                       dataset=load_dataset(None, max_side=64, limit=5), scorer=scorer,
                       store=WeightStore(weights_dir=tiny_weights), cache=cache, score_threads=threads)


def test_threads_give_the_same_rows_in_the_same_order(tiny_weights, tmp_path):
    order = [3, 0, 4, 1, 2]
    got = {}
    for threads in (1, 3):
        runner = _runner(tiny_weights, tmp_path, threads)
        try:
            seen = []
            rows, results = runner.evaluate(runner.base, Params(blend=0.3), order=order,
                                            report=lambda v, i, seen=seen: seen.append(i))
        finally:
            runner.close()
        assert [r["index"] for r in rows] == order == seen
        if threads > 1:  # a per-call override to one thread gives the same rows too
            serial, _ = runner.evaluate(runner.base, Params(blend=0.3), order=order, threads=1)
            assert [r["objective"] for r in serial] == [r["objective"] for r in rows]
        got[threads] = (rows, results)
    for a, b in zip(got[1][0], got[3][0], strict=True):
        keys = [*NAMES, "objective", "image", "index"]
        assert {k: a[k] for k in keys} == pytest.approx({k: b[k] for k in keys}, nan_ok=True, rel=0, abs=0)
    assert any(np.isfinite(r["objective"]) for r in got[3][0])
    for a, b in zip(got[1][1], got[3][1], strict=True):
        assert np.array_equal(a.image.rgb, b.image.rgb)


def test_a_later_image_failing_does_not_preempt_pruning(tiny_weights, tmp_path, monkeypatch):
    """With threads the next image's pipeline runs before this image is reported; if this image
    prunes the trial, the trial is pruned, exactly as with one thread, not failed by the next."""
    runner = _runner(tiny_weights, tmp_path, 2)
    pipe = runner.pipeline(runner.base)
    real = pipe.run
    broken = runner.dataset.items[1].image

    def run(image, params):
        if image is broken:
            raise PipelineError("boom")
        return real(image, params)

    monkeypatch.setattr(pipe, "run", run)

    def report(v, idx):
        raise Pruned(idx)

    try:
        with pytest.raises(Pruned, match="0"):
            runner.evaluate(runner.base, Params(), order=[0, 1, 2], report=report)
        with pytest.raises(PipelineError, match="boom"):  # unpruned, the failure is the trial's
            runner.evaluate(runner.base, Params(), order=[0, 1, 2])
    finally:
        runner.close()


def test_score_threads_must_be_positive(tiny_weights, tmp_path):
    with pytest.raises(ConfigError, match="score_threads"):
        _runner(tiny_weights, tmp_path, 0)


def test_large_outputs_are_scored_fewer_at_a_time_within_the_memory_budget():
    from tuner.memory import SCORING_BYTES_PER_OUTPUT_PX, MemoryEstimate, Plan, scoring_slots

    per_output = SCORING_BYTES_PER_OUTPUT_PX * 4096 * 4096  # 1 GiB for a 4096^2 output

    def plan(budget_gib: float) -> Plan:
        return Plan(tile=0, requested=0, out_size=(4096, 4096), budget=int(budget_gib * 2**30),
                    estimate=MemoryEstimate(host=10 * 2**30, device=0, stages={}))

    assert per_output == 2**30
    assert scoring_slots(plan(100), 4) == 4  # room for all
    assert scoring_slots(plan(12.5), 4) == 2  # 2.5 GiB beside the next run: two outputs
    assert scoring_slots(plan(10.5), 4) == 1  # no room beside it: one at a time, as without threads


# ---------------------------------------------------------------- run_trial's pruning rules


class _Pruner(optuna.pruners.BasePruner):
    """Says ``answer`` whenever asked, and records the intermediate values it was asked about."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.asked: list[dict[int, float]] = []

    def prune(self, study, trial) -> bool:
        self.asked.append(dict(trial.intermediate_values))
        return self.answer


def _fake_runner(tmp_path, piqe: dict[str, float]) -> TrialRunner:
    """A real TrialRunner (its evaluate calls run_trial's ``report``) over stand-in images whose
    pipeline and scorer give each image the fixed piqe of ``piqe``: no networks, no metrics."""
    model = ModelSpec.from_mapping({"name": "realesr-general-x4v3", "arch": TINY_SRVGG, "key": "params"})
    objective = O.from_mapping({"mode": "composite", "terms": [{"metric": "piqe"}]})  # per image: piqe itself
    scorer = SimpleNamespace(names=["piqe"], analysis=lambda item, res, pipe: None,
                             score=lambda res, analysis: ({"piqe": piqe[res.name]}, {}))
    dataset = SimpleNamespace(items=[SimpleNamespace(name=n, image=n) for n in piqe], content_hash="stand-in")
    runner = TrialRunner(base=PipelineSpec(model=model), base_params=Params(), space={}, objective=objective,
                         dataset=dataset, scorer=scorer, store=WeightStore(weights_dir=tmp_path), cache=None)
    pipe = SimpleNamespace(run=lambda image, params: SimpleNamespace(name=image, tile=0, plan=None, faces=[]),
                           model_identity=lambda denoise: [])
    runner.pipeline = lambda spec: pipe  # type: ignore[method-assign]
    return runner


def _run(study, runner, tmp_path, n_startup):
    trial = study.ask()
    _, reason = run_trial(study, trial, runner, runner.objective, Tracker(enabled=False, uri="", experiment="t"),
                          None, tmp_path, 0, n_startup)
    return study.get_trials(deepcopy=False)[trial.number], reason


PIQE = {"a": 30.0, "b": 20.0, "c": 25.0, "d": 35.0}


def test_nothing_is_pruned_until_n_startup_trials_have_completed(tmp_path):
    """Pruned and failed trials do not count: only COMPLETE ones give the pruner full results."""
    pruner = _Pruner(True)
    study = optuna.create_study(pruner=pruner)
    study.add_trial(create_trial(state=TrialState.PRUNED))
    study.add_trial(create_trial(state=TrialState.FAIL))
    runner = _fake_runner(tmp_path, PIQE)
    for _ in range(2):  # 0, then 1 trial completed: below n_startup=2, the pruner is not even asked
        t, reason = _run(study, runner, tmp_path, n_startup=2)
        assert t.state == TrialState.COMPLETE, reason
    assert pruner.asked == []
    t, reason = _run(study, runner, tmp_path, n_startup=2)  # 2 completed: now it may prune, at the first image
    assert t.state == TrialState.PRUNED and "after 1 image(s)" in reason
    assert len(pruner.asked) == 1 and len(t.intermediate_values) == 1


def test_the_baseline_trial_is_never_pruned(tmp_path):
    """Trial 0 (the model as shipped, re-queued after completed trials when its worker died) runs to
    the end whatever the pruner says: the relative gates and the preset need its values on every image."""
    pruner = _Pruner(True)
    study = optuna.create_study(pruner=pruner)
    for v in (10.0, 11.0):
        study.add_trial(create_trial(value=v))
    runner = _fake_runner(tmp_path, PIQE)
    study.enqueue_trial({}, user_attrs={"baseline": True})
    t, reason = _run(study, runner, tmp_path, n_startup=2)
    assert t.user_attrs["baseline"] is True
    assert t.state == TrialState.COMPLETE, reason
    assert pruner.asked == [] and len(t.intermediate_values) == len(PIQE)  # reported, never pruned
    t, _ = _run(study, runner, tmp_path, n_startup=2)  # the same study prunes an ordinary trial
    assert t.state == TrialState.PRUNED


def test_nan_per_image_values_are_not_reported_to_the_pruner(tmp_path):
    """An image where no objective term applies (NaN) is neither reported nor a reason to ask the pruner."""
    pruner = _Pruner(False)
    study = optuna.create_study(pruner=pruner)
    runner = _fake_runner(tmp_path, {"a": math.nan, "b": 20.0, "c": math.nan, "d": 35.0})
    t, reason = _run(study, runner, tmp_path, n_startup=0)
    assert t.state == TrialState.COMPLETE, reason
    assert t.intermediate_values == {1: 20.0, 3: 35.0}  # steps are dataset indices
    assert len(pruner.asked) == 2 and all(not math.isnan(v) for a in pruner.asked for v in a.values())
    assert t.values == [pytest.approx(27.5)]  # the mean over the images it applied to
