"""Warm study trials versus the naive loop people write around inference_realesrgan.py.

    python benchmarks/bench_warm_trials.py [--images 6] [--max-side 256] [--trials 5] [--model realesr-general-x4v3]

Naive trial: for every image, load the model from disk, upscale, blend, write the PNG, read
it back, and score it from scratch (new input analysis, no caches).  Warm trial: tuner's
TrialRunner after one cold pass (stage cache + per-input analyses + metric memo), with a
new blend value each trial, so SR is reused but blend and metrics are recomputed; outputs are
scored in ``--threads`` threads (``study.score_threads``; auto = the CPUs, at most 4).  Both
run the same portraits in one process; the outputs of the two paths are checked to be
identical.  Prints median seconds per trial and the ratio (goal >= 20).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from _common import ROOT, WEIGHTS, need_weights

from tuner import metrics as M
from tuner import objective as O
from tuner.blend import blend
from tuner.cache import StageCache
from tuner.dataset import load as load_dataset
from tuner.faces import FaceDetector
from tuner.images import decode, encode, reference_upscale
from tuner.pipeline import Params, PipelineSpec
from tuner.scoring import Scorer
from tuner.trials import TrialRunner
from tuner.upscale import UpscaleOptions, Upscaler
from tuner.weights import WeightStore, catalogue, load_state_dict


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--model", default="realesr-general-x4v3")
    ap.add_argument("--threads", type=int, default=2, help="TrialRunner score_threads (study.score_threads)")
    a = ap.parse_args()
    spec_m = catalogue("model")[a.model]
    need_weights(spec_m.file_name)
    names = yaml.safe_load((ROOT / "conf" / "metrics" / "study.yaml").read_text())["names"]
    objective = O.from_mapping(yaml.safe_load((ROOT / "conf" / "objective" / "default.yaml").read_text()))
    ds = load_dataset(None, max_side=a.max_side, limit=a.images)
    blends = [round(0.1 + 0.6 * i / max(a.trials - 1, 1), 3) for i in range(a.trials)]
    tmp = Path(tempfile.mkdtemp())

    def naive_trial(b: float) -> list[np.ndarray]:
        outs = []
        for it in ds.items:
            net = Upscaler.from_state_dict(spec_m.arch, load_state_dict(WEIGHTS / spec_m.file_name, spec_m.key))
            sr = net(it.image.rgb, UpscaleOptions())
            ref = reference_upscale(it.image.rgb, sr.shape[:2])
            out = blend(sr, ref, amount=b)
            p = encode(it.image.with_rgb(out), tmp / "naive" / f"{it.name}.png")
            o = decode(p).rgb
            analysis = M.InputAnalysis(it.image.rgb, FaceDetector()(it.image.rgb), o.shape[:2])
            M.score(M.Context(o, analysis), names)
            outs.append(o)
        return outs

    cache = StageCache(tmp / "cache")
    scorer = Scorer(names, iqa_max_side=1024, detector="retinaface", detection_threshold=0.9, cache=cache)
    runner = TrialRunner(base=PipelineSpec(model=spec_m), base_params=Params(), space={}, objective=objective,
                         dataset=ds, scorer=scorer, store=WeightStore(weights_dir=WEIGHTS, allow_download=False),
                         cache=cache, score_threads=a.threads)
    t = time.perf_counter()
    runner.evaluate(runner.base, Params(blend=0.05))  # the cold pass
    cold = time.perf_counter() - t

    naive_t, warm_t = [], []
    for b in blends:
        t = time.perf_counter()
        naive_outs = naive_trial(b)
        naive_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        _, results = runner.evaluate(runner.base, Params(blend=b))
        warm_t.append(time.perf_counter() - t)
        for n_out, res in zip(naive_outs, results, strict=True):  # identical outputs (as written to PNG)
            q = decode(encode(res.image, tmp / "warm.png")).rgb
            assert np.array_equal(q, n_out), "warm and naive outputs differ"
    n, w = statistics.median(naive_t), statistics.median(warm_t)
    print(f"{a.model}, {len(ds.items)} portraits at max_side {a.max_side}, {a.trials} trials (blend {blends})")
    print(f"cold first pass {cold:.2f}s; naive trial median {n:.2f}s; warm trial median {w:.3f}s")
    print(f"naive / warm = {n / w:.1f}x (goal >= 20); outputs identical: yes")
    stage_shares(runner, blends[-1] + 0.05)


def stage_shares(runner: TrialRunner, b: float) -> None:
    """Where a warm trial's time goes: one more warm trial under cProfile (scored in one thread),
    cumulative time per stage."""
    import cProfile
    import pstats

    from tuner import metrics as M

    prof = cProfile.Profile()
    # cProfile sees only its own thread: profile this trial with scoring in the calling thread
    t = time.perf_counter()
    prof.enable()
    runner.evaluate(runner.base, Params(blend=b), threads=1)
    prof.disable()
    total = time.perf_counter() - t
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]

    def cum(module_suffix: str, func: str) -> float:
        return sum(v[3] for (f, _, name), v in stats.items() if f.endswith(module_suffix) and name == func)

    stages = {"pipeline (cached SR + blend)": cum("tuner/pipeline.py", "run"),
              "cache keys (output/input hashes)": cum("tuner/scoring.py", "metric_key")}
    for name in runner.scorer.names:
        fn = getattr(M.get(name).fn, "func", M.get(name).fn)
        stages[f"metric {name}"] = cum(fn.__code__.co_filename.split("/tuner/")[-1], fn.__name__)
    print(f"warm trial under the profiler, scored in one thread: {total:.3f}s; share per stage:")
    for k, v in sorted(stages.items(), key=lambda kv: -kv[1]):
        if v > 0:
            print(f"  {k:<36} {v:6.3f}s  {100 * v / total:5.1f}%")


if __name__ == "__main__":
    main()
