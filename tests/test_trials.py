"""TrialRunner: scoring in threads changes nothing but the time, pruning included."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_SRVGG

from tuner import objective as O
from tuner.cache import StageCache
from tuner.dataset import load as load_dataset
from tuner.errors import ConfigError, PipelineError
from tuner.pipeline import Params, PipelineSpec
from tuner.scoring import Scorer
from tuner.trials import TrialRunner
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
