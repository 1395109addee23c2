"""Metrics -> objective values and constraints.

``composite`` mode minimises one number per image, averaged over images:

    value_i = sum_t weight_t * term_t(m_t,i)
    term(m) = |m - target| / scale          when the term has a target,
            = max(0, m - target) / scale    with ``hinge: upper`` (only excess counts),
            = sign * m / scale              otherwise (sign +1 for lower-better metrics, -1 else)

Images where a metric does not apply (NaN, e.g. no face) skip that term.

``multi`` mode returns one study objective per listed metric (NSGA-II by default), each
an image mean, in the metric table's direction (or |m - target| minimised).

Constraints use Optuna's convention (<= 0 is feasible) on image means:
``max``: mean <= max; ``min``: mean >= min; ``min_relative``/``max_relative``: the mean
compared with the same metric of the baseline trial (out-of-box settings, trial 0).
NaN means do not apply (e.g. seam without tiling) and count as satisfied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import metrics as M
from .errors import ConfigError


@dataclass(frozen=True)
class Term:
    metric: str
    weight: float = 1.0
    scale: float = 1.0
    target: float | None = None
    hinge: bool = False

    def value(self, m: float) -> float:
        if math.isnan(m):
            return math.nan
        if self.target is not None:
            d = (m - self.target) if self.hinge else abs(m - self.target)
            return self.weight * max(d, 0.0) / self.scale
        sign = 1.0 if M.get(self.metric).lower_better else -1.0
        return self.weight * sign * m / self.scale

    @property
    def direction(self) -> str:
        if self.target is not None:
            return "minimize"
        return "minimize" if M.get(self.metric).lower_better else "maximize"


@dataclass(frozen=True)
class Constraint:
    metric: str
    max: float | None = None
    min: float | None = None
    max_relative: float | None = None
    min_relative: float | None = None

    @property
    def relative(self) -> bool:
        return self.max_relative is not None or self.min_relative is not None

    def violation(self, mean: float, baseline: float | None) -> float:
        """<= 0 when satisfied (Optuna convention); NaN metric = not applicable = satisfied."""
        if math.isnan(mean):
            return 0.0
        v = -math.inf
        if self.max is not None:
            v = max(v, mean - self.max)
        if self.min is not None:
            v = max(v, self.min - mean)
        if self.relative:
            if baseline is None or math.isnan(baseline):
                return 0.0  # the baseline trial itself, or the metric never applied
            if self.max_relative is not None:
                v = max(v, mean - (baseline + self.max_relative))
            if self.min_relative is not None:
                v = max(v, (baseline + self.min_relative) - mean)
        return 0.0 if v == -math.inf else float(v)

    def describe(self) -> str:
        parts = []
        if self.max is not None:
            parts.append(f"<= {self.max:g}")
        if self.min is not None:
            parts.append(f">= {self.min:g}")
        if self.max_relative is not None:
            parts.append(f"<= baseline {self.max_relative:+g}")
        if self.min_relative is not None:
            parts.append(f">= baseline {self.min_relative:+g}")
        return f"{self.metric} " + " and ".join(parts)


@dataclass(frozen=True)
class Objective:
    mode: str  # composite | multi
    terms: tuple[Term, ...]
    constraints: tuple[Constraint, ...] = field(default_factory=tuple)

    @property
    def metrics(self) -> list[str]:
        seen: dict[str, None] = {}
        for t in self.terms:
            seen[t.metric] = None
        for c in self.constraints:
            seen[c.metric] = None
        return list(seen)

    @property
    def directions(self) -> list[str]:
        return ["minimize"] if self.mode == "composite" else [t.direction for t in self.terms]

    def per_image(self, values: Mapping[str, float]) -> float:
        """Composite value of one image (lower better); used for per-image pruning."""
        parts = [t.value(values.get(t.metric, math.nan)) for t in self.terms]
        parts = [p for p in parts if not math.isnan(p)]
        return float(sum(parts)) if parts else math.nan

    def values(self, rows: Sequence[Mapping[str, float]]) -> list[float]:
        """Study objective value(s) over all images."""
        if self.mode == "composite":
            return [_nanmean([self.per_image(r) for r in rows])]
        out = []
        for t in self.terms:
            m = _nanmean([r.get(t.metric, math.nan) for r in rows])
            out.append(abs(m - t.target) if t.target is not None else m)
        return out

    def constraint_values(self, means: Mapping[str, float], baseline: Mapping[str, float] | None) -> list[float]:
        return [c.violation(means.get(c.metric, math.nan), None if baseline is None else baseline.get(c.metric))
                for c in self.constraints]


def _nanmean(xs: Sequence[float]) -> float:
    a = np.asarray([x for x in xs if not math.isnan(x)], dtype=float)
    return float(a.mean()) if a.size else math.nan


def means(rows: Sequence[Mapping[str, float]], names: Sequence[str]) -> dict[str, float]:
    return {n: _nanmean([r.get(n, math.nan) for r in rows]) for n in names}


def from_mapping(node: Mapping[str, Any]) -> Objective:
    """Validate ``conf/objective/*.yaml``; metric names and directions come from the metric table."""
    allowed = {"mode", "terms", "constraints", "description"}
    if set(node) - allowed:
        raise ConfigError(f"unknown key(s) in objective: {sorted(set(node) - allowed)}")
    mode = node.get("mode", "composite")
    if mode not in ("composite", "multi"):
        raise ConfigError(f"objective.mode must be composite or multi, got {mode!r}")
    terms = []
    for t in node.get("terms") or []:
        if set(t) - {"metric", "weight", "scale", "target", "hinge"}:
            raise ConfigError(f"objective term {t}: unknown keys {sorted(set(t) - {'metric', 'weight', 'scale', 'target', 'hinge'})}")
        info = M.get(t["metric"])
        if info.lower_better is None and t.get("target") is None:
            raise ConfigError(f"objective term '{t['metric']}' is informational (no direction): give it a target")
        hinge = t.get("hinge", False)
        if hinge not in (False, "upper"):
            raise ConfigError(f"objective term '{t['metric']}': hinge must be false or 'upper'")
        if hinge and t.get("target") is None:
            raise ConfigError(f"objective term '{t['metric']}': hinge needs a target")
        scale = float(t.get("scale", 1.0))
        if scale <= 0:
            raise ConfigError(f"objective term '{t['metric']}': scale must be > 0")
        terms.append(Term(t["metric"], float(t.get("weight", 1.0)), scale,
                          None if t.get("target") is None else float(t["target"]), bool(hinge)))
    if not terms:
        raise ConfigError("objective.terms is empty")
    cons = []
    for name, c in (node.get("constraints") or {}).items():
        M.get(name)
        c = dict(c or {})
        bad = set(c) - {"max", "min", "max_relative", "min_relative"}
        if bad:
            raise ConfigError(f"constraint '{name}': unknown keys {sorted(bad)}")
        if not c:
            raise ConfigError(f"constraint '{name}' has no bound")
        cons.append(Constraint(name, **{k: float(v) for k, v in c.items() if v is not None}))
    return Objective(mode=mode, terms=tuple(terms), constraints=tuple(cons))
