"""Compare two pipelines on one dataset: the regression gate between model versions or presets.

Both sides run on the same images (stage-cache hits are counted and reported); every image is
scored with the same metric set.  Then, per metric, the paired per-image **harm** of the
candidate (positive = worse; for a metric with a ``target``, the growth of its distance from
the target, so both crunchier and waxier skin count as harm, on a group photograph the face
furthest from it, :func:`tuner.objective.distance`):

- the median harm and its 95 % bootstrap CI (percentile method, images resampled in pairs,
  ``scipy.stats.bootstrap``);
- the one-sided Wilcoxon signed-rank p-value of "the candidate is worse" (``scipy.stats.wilcoxon``);
- the metric **fails** when p < ``alpha`` *and* the whole two-sided 95 % CI lies above the
  metric's tolerance (its lower end is a one-sided 97.5 % bound: deliberately stricter than
  alpha), or when the candidate has no value on an image where the baseline has one.  A
  significant harm whose CI reaches below the tolerance reads ``worse (not shown beyond
  tolerance)``; with fewer than :data:`MIN_PAIRS` paired values no p-value can reach 0.05
  (the smallest exact one-sided p is 2^-n), and the metric reads ``insufficient data``.
  Each metric is tested on its own (no multiplicity correction): with six metrics, a
  candidate equal to the baseline fails some metric by chance well under 6 x 2.5 % of the time.

Both sides are scored against one analysis of each input (the faces the baseline's detector
finds), so a candidate cannot dodge the face metrics by finding no face.  Hard gates are per
image (a regression on one face fails, whatever the mean): ``max`` bounds the candidate's
value, ``min_relative`` / ``max_relative`` bound it against the same image's baseline value,
``relax_to_baseline`` (with ``max``) lifts ``max`` to the baseline's value + this on an image where
the baseline is already past it (the study's arithmetic, :class:`tuner.objective.Constraint`; here
the baseline is the side being replaced, so such an image may not get worse than production;
``excess`` in compare.json is measured from the bound applied), and a candidate without a value
where the baseline has one violates the gate.  The verdict is ``fail`` when any metric or gate
fails, or when the candidate fails to run on an image the baseline ran on.

Nothing here reads a config: :func:`tuner.config.compare_job` builds the sides and rules.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as M
from . import objective as O
from .cache import StageCache
from .dataset import Dataset
from .errors import ConfigError, ImageError, PipelineError, check_keys
from .facegeom import faces_to_array
from .images import encode
from .pipeline import Params, Pipeline, PipelineSpec
from .scoring import Scorer
from .settings import Settings
from .weights import WeightStore

log = logging.getLogger("tuner")

SCHEMA = 3  # of compare.json; bump on any change of its shape (tests/data/compare.schema.json)
MIN_PAIRS = 5  # paired values a metric needs before it can be significant at 0.05 (2^-5 = 0.031)


@dataclass(frozen=True)
class MetricRule:
    metric: str
    tolerance: float = 0.0  # harm accepted, in the metric's units
    target: float | None = None  # harm = growth of |value - target| (crunch: distance from natural skin)


@dataclass(frozen=True)
class Rules:
    metrics: tuple[MetricRule, ...]
    gates: tuple[O.Constraint, ...]  # per image, with the study's arithmetic (baseline = the side replaced)
    alpha: float = 0.05
    n_resamples: int = 2000
    seed: int = 0

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> Rules:
        check_keys(m, {"metrics", "gates", "alpha", "n_resamples", "seed"}, "compare")
        rules = []
        for name, r in (m.get("metrics") or {}).items():
            r = r or {}
            check_keys(r, {"tolerance", "target"}, f"compare.metrics.{name}")
            if M.get(name).lower_better is None and r.get("target") is None:
                raise ConfigError(f"compare.metrics.{name}: an information-only metric needs a target")
            if r.get("target") is not None:
                O.check_two_sided(name, "compare.metrics")
            tol = float(r.get("tolerance", 0.0))
            if not tol >= 0:
                raise ConfigError(f"compare.metrics.{name}.tolerance must be >= 0, got {tol}")
            rules.append(MetricRule(name, tol, None if r.get("target") is None else float(r["target"])))
        gates = []
        for name, g in (m.get("gates") or {}).items():
            gate = O.constraint(name, g, "compare.gates")  # the study's own parse and checks (conf/guards/)
            if gate.reduce != "worst":
                raise ConfigError(f"compare.gates '{name}': compare gates every image; reduce: {gate.reduce} is "
                                  "not a gate here (drop it)")
            gates.append(gate)
        alpha = float(m.get("alpha", 0.05))
        if not 0 < alpha < 1:
            raise ConfigError(f"compare.alpha must be in (0, 1), got {alpha}")
        return cls(tuple(rules), tuple(gates), alpha, int(m.get("n_resamples", 2000)), int(m.get("seed", 0)))

    @property
    def names(self) -> list[str]:
        least = M.least_siblings(r.metric for r in self.metrics if r.target is not None)
        return list(dict.fromkeys([r.metric for r in self.metrics] + least + [g.metric for g in self.gates]))


@dataclass(frozen=True)
class Side:
    """One side of a comparison: what runs, and where it came from (for people)."""

    label: str  # baseline | candidate
    source: str  # "preset prod.yaml", "model RealESRGAN_x4plus", "weights finetuned.pth"
    spec: PipelineSpec
    params: Params

    @property
    def settings(self) -> Settings:
        return Settings.of(self.spec, self.params)


@dataclass
class SideRun:
    rows: dict[str, dict[str, float]] = field(default_factory=dict)  # image -> metric -> value
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)
    faces: dict[str, list[list[float]]] = field(default_factory=dict)  # image -> faces (input px)
    reused: dict[str, int] = field(default_factory=dict)  # stage -> images whose stage came from the cache
    failures: dict[str, str] = field(default_factory=dict)


def run_side(ds: Dataset, side: Side, scorer: Scorer, *, store: WeightStore, cache: StageCache | None,
             out_dir: Path) -> SideRun:
    """Run ``side`` on every image, write its outputs (PNG) to ``out_dir``, score them."""
    from tqdm import tqdm

    pipe = Pipeline(side.spec, store=store, cache=cache)
    run = SideRun(reused={"sr": 0, "restore": 0})
    for it in tqdm(ds.items, desc=side.label, unit="img"):
        try:
            res = pipe.run(it.image, side.params)
            encode(res.image, out_dir / f"{it.name}.png")
        except (PipelineError, ImageError) as e:
            run.failures[it.name] = str(e)
            log.error("%s: %s: %s", side.label, it.name, e)
            continue
        for stage, hit in res.cached.items():
            run.reused[stage] = run.reused.get(stage, 0) + int(hit)
        vals, extra = scorer.score(res, scorer.analysis(it, res, pipe))
        run.rows[it.name] = vals
        run.extras[it.name] = extra
        run.faces[it.name] = faces_to_array(res.faces).tolist()
    return run


def harm(rule: MetricRule, baseline: float, candidate: float, least: tuple[float, float] = (math.nan, math.nan)) -> float:
    """The candidate's harm on one image (positive = worse), NaN where the metric does not apply.  With a
    target, the growth of the distance from it (:func:`tuner.objective.distance`; ``least``: the metric's
    lowest face on the baseline and the candidate, :data:`tuner.metrics.LEAST`, so on a group photograph
    the face furthest from the target decides, on either side)."""
    if rule.target is not None:
        return O.distance(candidate, rule.target, least[1]) - O.distance(baseline, rule.target, least[0])
    return candidate - baseline if M.get(rule.metric).lower_better else baseline - candidate


def metric_stats(harms: Sequence[float], rule: MetricRule, rules: Rules, *, missing: int = 0) -> dict[str, Any]:
    """Median harm, its bootstrap CI, the Wilcoxon p-value, and the verdict for one metric.
    ``missing``: images where the baseline has a value and the candidate none (each fails it)."""
    from scipy import stats

    d = np.asarray([h for h in harms if math.isfinite(h)], dtype=np.float64)
    out: dict[str, Any] = {"n": int(d.size), "missing": int(missing), "tolerance": rule.tolerance,
                           "target": rule.target,
                           "direction": "target" if rule.target is not None else M.get(rule.metric).direction}
    if d.size == 0:
        return {**out, "median_harm": None, "ci95": [None, None], "p_worse": None, "p_better": None,
                "verdict": f"fail (no value on {missing} image(s))" if missing else "not applicable"}
    median = float(np.median(d))
    if d.size >= 2 and np.ptp(d) > 0:
        ci = stats.bootstrap((d,), np.median, n_resamples=rules.n_resamples, confidence_level=0.95,
                             method="percentile", random_state=np.random.default_rng(rules.seed)).confidence_interval
        lo, hi = float(ci.low), float(ci.high)
    else:
        lo = hi = median
    if np.any(d != 0):  # zsplit: zero harms count, half on each side (the default would drop them)
        p_worse = float(stats.wilcoxon(d, alternative="greater", zero_method="zsplit").pvalue)
        p_better = float(stats.wilcoxon(d, alternative="less", zero_method="zsplit").pvalue)
    else:
        p_worse = p_better = 1.0
    if missing:
        verdict = f"fail (no value on {missing} image(s))"
    elif d.size < MIN_PAIRS:
        verdict = "insufficient data"
    elif p_worse < rules.alpha and lo > rule.tolerance:
        verdict = "fail"
    elif p_worse < rules.alpha:
        verdict = "worse (not shown beyond tolerance)"
    elif p_better < rules.alpha and hi < 0:
        verdict = "better"
    else:
        verdict = "no significant change"
    return {**out, "median_harm": median, "ci95": [lo, hi], "p_worse": p_worse, "p_better": p_better,
            "verdict": verdict}


def _bounds(gate: O.Constraint) -> dict[str, float | None]:
    return {k: getattr(gate, k) for k in O.BOUNDS}


def gate_result(gate: O.Constraint, images: list[str], base: SideRun, cand: SideRun) -> dict[str, Any]:
    """Per image: the candidate's value against the gate; the failing images, worst first."""
    failing: list[dict[str, Any]] = []
    checked = 0
    for name in images:
        c, b = cand.rows[name].get(gate.metric, math.nan), base.rows[name].get(gate.metric, math.nan)
        if not math.isfinite(c):
            if math.isfinite(b):  # the baseline could be judged here and the candidate cannot: a violation
                checked += 1
                failing.append({"image": name, "candidate": None, "baseline": b, "excess": None,
                                "why": "no value on the candidate"})
            continue
        if not gate.absolute and not math.isfinite(b):  # only relative bounds, and no baseline value here
            continue
        checked += 1
        excess = gate.judge(c, b)  # the study's own per-image gate arithmetic and rounding (> 0 = violated)
        if excess > 0:
            failing.append({"image": name, "candidate": c, "baseline": b if math.isfinite(b) else None,
                            "excess": excess, "why": "past its bound"})
    failing.sort(key=lambda f: -math.inf if f["excess"] is None else -f["excess"])
    return {**_bounds(gate), "images_checked": checked,
            "holds": not failing, "failing": failing}


def compare(ds: Dataset, baseline: Side, candidate: Side, rules: Rules, *, metric_names: list[str],
            iqa_max_side: int, store: WeightStore, cache: StageCache | None, out: Path) -> dict[str, Any]:
    """Run both sides, write their outputs under ``out``, and return the compare.json mapping."""
    names = list(dict.fromkeys([*metric_names, *rules.names]))
    # one scorer: both sides are judged against the same analysis of each input (the baseline's faces)
    scorer = Scorer(names, iqa_max_side=iqa_max_side, detector=baseline.spec.detector,
                    detection_threshold=baseline.spec.detection_threshold, cache=cache)
    runs = {side.label: run_side(ds, side, scorer, store=store, cache=cache, out_dir=out / side.label)
            for side in (baseline, candidate)}
    base, cand = runs["baseline"], runs["candidate"]
    images = [it.name for it in ds.items if it.name in base.rows and it.name in cand.rows]  # paired only
    if not base.rows:
        raise PipelineError("the baseline ran on no image; nothing to compare")
    per_image: list[dict[str, Any]] = []
    harm_all: dict[str, dict[str, float]] = {}
    for name in images:
        b_row, c_row = base.rows[name], cand.rows[name]
        harms = {r.metric: harm(r, b_row[r.metric], c_row[r.metric], (O.least_of(b_row, r.metric),
                                                                        O.least_of(c_row, r.metric)))
                 for r in rules.metrics}
        harm_all[name] = harms
        per_image.append({"image": name, "baseline": _json(b_row), "candidate": _json(c_row),
                          "harm": _json(harms), "faces": base.faces[name],
                          "notes": {"baseline": base.extras[name].get("notes", ""),
                                    "candidate": cand.extras[name].get("notes", "")}})
    metric_out = {r.metric: metric_stats([harm_all[n][r.metric] for n in images], r, rules,
                                         missing=sum(math.isfinite(base.rows[n][r.metric])
                                                     and not math.isfinite(cand.rows[n][r.metric]) for n in images))
                  for r in rules.metrics}
    gates = {g.metric: gate_result(g, images, base, cand) for g in rules.gates}
    broken = sorted(set(base.rows) & set(cand.failures))  # ran on the baseline, failed on the candidate
    failed = sorted([m for m, s in metric_out.items() if s["verdict"].startswith("fail")]
                    + [f"gate:{g}" for g, r in gates.items() if not r["holds"]]
                    + (["runs"] if broken else []))
    return {
        "schema": SCHEMA,
        "verdict": "fail" if failed else "pass",
        "failed": failed,
        "baseline": {"source": baseline.source, "settings": baseline.settings.to_dict()},
        "candidate": {"source": candidate.source, "settings": candidate.settings.to_dict()},
        "dataset": {"root": str(ds.root), "n_images": len(ds.items), "n_paired": len(images),
                    "max_side": ds.max_side, "content_hash": ds.content_hash,
                    "pairs": None if ds.pairs is None else asdict(ds.pairs)},
        "rules": {"alpha": rules.alpha, "n_resamples": rules.n_resamples, "seed": rules.seed,
                  "metrics": [asdict(r) for r in rules.metrics], "gates": [{"metric": g.metric, **_bounds(g)} for g in rules.gates]},
        "metrics": metric_out,
        "gates": gates,
        "images": per_image,
        "reused": {"baseline": base.reused, "candidate": cand.reused, "of": len(ds.items)},
        "candidate_failed_on": broken,
        "failures": {"baseline": base.failures, "candidate": cand.failures,
                     "dataset": {str(p): why for p, why in ds.failures}},
    }


def _json(d: Mapping[str, float]) -> dict[str, float | None]:
    return {k: (None if v is None or not math.isfinite(float(v)) else round(float(v), 6)) for k, v in d.items()}


def summary_table(result: Mapping[str, Any]) -> str:
    """The terminal summary: one line per metric and gate."""
    import pandas as pd

    rows = []
    for m, s in result["metrics"].items():
        ci = s["ci95"]
        rows.append({"check": m, "n": s["n"], "median harm": s["median_harm"],
                     "95% CI": "-" if ci[0] is None else f"[{ci[0]:.3g}, {ci[1]:.3g}]",
                     "p(worse)": s["p_worse"], "tolerance": s["tolerance"], "verdict": s["verdict"]})
    for g, r in result["gates"].items():
        verdict = "holds on every image" if r["images_checked"] else "not applicable (no image to check)"
        if r["failing"]:
            worst = r["failing"][0]
            value = "no value" if worst["candidate"] is None else f"{worst['candidate']:.3g}"
            verdict = f"FAILS on {len(r['failing'])} image(s), worst {worst['image']} ({value})"
        rows.append({"check": f"gate {g}", "n": r["images_checked"], "median harm": None, "95% CI": "-",
                     "p(worse)": None, "tolerance": None, "verdict": verdict})
    ds = result["dataset"]
    head = f"{ds['n_paired']} of {ds['n_images']} image(s) ran on both sides"
    if result["candidate_failed_on"]:
        head += f"; the candidate FAILED to run on {', '.join(result['candidate_failed_on'])}"
    return head + "\n" + pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}", na_rep="-")
