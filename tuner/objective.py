"""Metrics -> objective values and constraints.

``composite`` mode minimises one number per image, averaged over images:

    value_i = sum_t weight_t * term_t(m_t,i)
    term(m) = |m - target| / scale          when the term has a target (a per-face metric: the
                                            face furthest from it, either side; see distance),
            = max(0, m - target) / scale    with ``hinge: upper`` (only excess counts),
            = sign * m / scale              otherwise (sign +1 for lower-better metrics, -1 else)

Images where a metric does not apply (NaN, e.g. no face) skip that term.

``multi`` mode returns one study objective per listed metric (NSGA-II by default): the
image mean of the metric in the metric table's direction, or, for a term with a target,
the image mean of the per-image distance (:func:`distance`: |m_i - target|, or the face furthest
from it on a group photograph; a mean of distances, so a 2 dB image and a 14 dB image do not
cancel out around an 8 dB target).

Constraints are **per-image guard rails** by default (``reduce: worst``): each image is
checked on its own and the trial's violation is the worst image's, in Optuna's
convention (<= 0 is feasible).  One face turned into another person fails the gate
whatever the other faces score.  ``reduce: mean`` gates the image mean instead.
Bounds: ``max``: m <= max; ``min``: m >= min; ``min_relative``/``max_relative``: m
compared with the same metric *of the same image* under the baseline trial (the model
as shipped, trial 0); ``relax_to_baseline`` (with ``max``): on an image where the baseline is
already past ``max`` (a real, degraded input the band was not calibrated on), the bound becomes
that image's baseline value plus this -- the guard rail relative to what the input allows,
no worse than the model as shipped -- while inputs inside the band keep ``max``; ``relax_limit``
caps that relaxed bound (identity: above 0.6, another person, always fails, whatever the baseline did).  NaN values
do not apply (e.g. seam without tiling) and count as satisfied.  A relative gate with no
baseline is an error, never silently disabled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from . import metrics as M
from .errors import ConfigError, TunerError


@dataclass(frozen=True)
class Term:
    metric: str
    weight: float = 1.0
    scale: float = 1.0
    target: float | None = None
    hinge: bool = False

    def value(self, m: float, least: float = math.nan) -> float:
        """The term on one image: ``m`` its metric, ``least`` the metric's lowest face (:data:`tuner.metrics.LEAST`)."""
        if math.isnan(m):
            return math.nan
        if self.target is not None:
            return self.weight * distance(m, self.target, least, self.hinge) / self.scale
        sign = 1.0 if M.get(self.metric).lower_better else -1.0
        return self.weight * sign * m / self.scale

    @property
    def direction(self) -> str:
        if self.target is not None:
            return "minimize"
        return "minimize" if M.get(self.metric).lower_better else "maximize"


def distance(m: float, target: float, least: float = math.nan, hinge: bool = False) -> float:
    """One image's distance from a term's target: ``|m - target|``, or only the excess ``max(m - target, 0)``
    with ``hinge``.  ``m`` is a per-face metric's highest face (crunch: the crunchiest); ``least``, where
    given, its lowest face's (:data:`tuner.metrics.LEAST`), so on a group photograph the face furthest from
    the target on either side decides, not only the highest (with one face the two are equal)."""
    if math.isnan(m):
        return m
    if hinge:
        return max(m - target, 0.0)
    return abs(m - target) if math.isnan(least) else max(abs(m - target), abs(least - target))


def check_two_sided(metric: str, where: str, hint: str = "") -> None:
    """Refuse a two-sided target on a metric whose value is one face of a group photograph (its worst, or
    a ``_least`` sibling's least) with nothing for the other side (:data:`tuner.metrics.LEAST`)."""
    if (metric in M.WORST_FACE and metric not in M.LEAST) or metric in M.LEAST.values():
        raise ConfigError(f"{where} '{metric}': its value is one face of an image with several, so a two-sided "
                          f"target cannot see a face on the other side{hint}")


class BaselineMissing(TunerError):
    """A relative constraint needs the baseline trial's per-image values, and there are none."""


# per-image values of one metric, by image name
PerImage = Mapping[str, float]

STORED_DECIMALS = 6  # what a trial stores its per-image values with (trials.per_image_values), the baseline's too


def stored(x: float) -> float:
    """``x`` on the decimals per-image values are stored with (NaN stays NaN): what a per-image gate compares."""
    return round(x, STORED_DECIMALS)


@dataclass(frozen=True)
class Gate:
    """One constraint's outcome on one trial: the violation (<= 0 holds), and the image that decided it."""

    violation: float
    value: float  # the deciding value: the worst image's (reduce=worst) or the mean (reduce=mean)
    image: str | None  # the worst image (reduce=worst), None for reduce=mean or when nothing applied


@dataclass(frozen=True)
class Constraint:
    metric: str
    max: float | None = None
    min: float | None = None
    max_relative: float | None = None
    min_relative: float | None = None
    relax_to_baseline: float | None = None  # with max: per image, max(max, baseline + this)
    relax_limit: float | None = None  # with relax_to_baseline: the relaxed bound never goes above this
    reduce: str = "worst"  # worst (every image must hold) | mean

    def __post_init__(self) -> None:
        if self.relax_to_baseline is not None and self.max is None:
            raise ConfigError(f"constraint '{self.metric}': relax_to_baseline relaxes a max, and there is none")
        if self.relax_limit is not None and (self.relax_to_baseline is None or self.max is None
                                             or not math.isfinite(self.relax_limit) or self.relax_limit < self.max):
            raise ConfigError(f"constraint '{self.metric}': relax_limit caps relax_to_baseline and must be a number "
                              ">= max")
        if self.relax_limit is not None and self.reduce != "worst":
            raise ConfigError(f"constraint '{self.metric}': relax_limit is a per-image cap; it needs reduce: worst")

    @property
    def absolute(self) -> bool:
        """Has a bound that needs no baseline value (``max`` or ``min``)."""
        return self.max is not None or self.min is not None

    @property
    def relative(self) -> bool:
        return self.max_relative is not None or self.min_relative is not None or self.relax_to_baseline is not None

    def violation(self, value: float, baseline: float | None) -> float:
        """Violation of one value (<= 0 when satisfied); NaN = not applicable = satisfied.

        ``baseline`` is the same quantity under the baseline trial; a relative bound with
        no baseline raises :class:`BaselineMissing` (a NaN baseline means the metric never
        applied to the baseline, so the relative bound does not apply either).
        """
        if math.isnan(value):
            return 0.0
        if self.relative and baseline is None:
            raise BaselineMissing(f"constraint '{self.describe()}' needs the baseline trial's values, which are missing")
        b = math.nan if baseline is None else baseline  # NaN: the relative bounds do not apply
        v = -math.inf
        if self.max is not None:
            bound = self.max
            if self.relax_to_baseline is not None and not math.isnan(b):
                relaxed = b + self.relax_to_baseline
                bound = max(bound, relaxed if self.relax_limit is None else min(relaxed, self.relax_limit))
            v = max(v, value - bound)
        if self.min is not None:
            v = max(v, self.min - value)
        if not math.isnan(b):
            if self.max_relative is not None:
                v = max(v, value - (b + self.max_relative))
            if self.min_relative is not None:
                v = max(v, (b + self.min_relative) - value)
        return 0.0 if v == -math.inf else float(v)

    def judge(self, value: float, baseline: float | None) -> float:
        """:meth:`violation` of one image's value with both sides on the stored decimals, so the
        baseline trial holds against its own stored values and export's recheck, and ``tuner
        compare``'s gates, agree with the trial at a bound (0.4500004 holds ``max: 0.45``)."""
        return self.violation(stored(value), None if baseline is None else stored(baseline))

    def gate(self, rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, PerImage] | None) -> Gate:
        """Evaluate over a trial's per-image rows (each with ``image`` and metric values)."""
        base = None if baseline is None else baseline.get(self.metric)
        if self.relative and base is None:
            raise BaselineMissing(f"constraint '{self.describe()}' needs the baseline trial's values of "
                                  f"'{self.metric}', which are missing")
        if self.reduce == "mean":
            m = _nanmean([_f(r.get(self.metric)) for r in rows])
            b = None if base is None else _nanmean([_f(v) for v in base.values()])
            return Gate(self.violation(m, b), m, None)
        worst = Gate(-math.inf, math.nan, None)
        for r in rows:
            name = str(r["image"])
            b = None
            if base is not None:
                if name not in base:
                    raise BaselineMissing(f"constraint '{self.describe()}': the baseline has no value for image "
                                          f"'{name}'")
                b = _f(base[name])
            v = _f(r.get(self.metric))
            viol = self.judge(v, b)  # on the stored decimals
            if not math.isnan(v) and viol > worst.violation:
                worst = Gate(viol, stored(v), name)
        return Gate(0.0, math.nan, None) if worst.image is None else worst

    def describe(self) -> str:
        where = "every image" if self.reduce == "worst" else "image mean"
        return f"{self.metric} {self.bounds()} ({where})"

    def bounds(self) -> str:
        """The bounds alone, e.g. ``<= 0.45 (or baseline +0 where it is above, up to 0.6)``."""
        parts = []
        if self.max is not None:
            parts.append(f"<= {self.max:g}" + ("" if self.relax_to_baseline is None else
                                               f" (or baseline {self.relax_to_baseline:+g} where it is above"
                                               + ("" if self.relax_limit is None else f", up to {self.relax_limit:g}")
                                               + ")"))
        if self.min is not None:
            parts.append(f">= {self.min:g}")
        if self.max_relative is not None:
            parts.append(f"<= baseline {self.max_relative:+g}")
        if self.min_relative is not None:
            parts.append(f">= baseline {self.min_relative:+g}")
        return " and ".join(parts)


def _f(x: Any) -> float:
    return math.nan if x is None else float(x)


def least_of(values: Mapping[str, Any], metric: str) -> float:
    """``metric``'s lowest face in one image's values (:data:`tuner.metrics.LEAST`), NaN where not scored."""
    return _f(values.get(M.LEAST[metric])) if metric in M.LEAST else math.nan


@dataclass(frozen=True)
class Objective:
    mode: str  # composite | multi
    terms: tuple[Term, ...]
    constraints: tuple[Constraint, ...] = field(default_factory=tuple)

    @property
    def metrics(self) -> list[str]:
        two_sided = [t.metric for t in self.terms if t.target is not None and not t.hinge]  # both sides of a group photo
        return list(dict.fromkeys([*(t.metric for t in self.terms), *M.least_siblings(two_sided),
                                   *(c.metric for c in self.constraints)]))

    @property
    def directions(self) -> list[str]:
        return ["minimize"] if self.mode == "composite" else [t.direction for t in self.terms]

    def per_image(self, values: Mapping[str, float]) -> float:
        """Composite value of one image (lower better); used for per-image pruning."""
        parts = [t.value(values.get(t.metric, math.nan), least_of(values, t.metric)) for t in self.terms]
        parts = [p for p in parts if not math.isnan(p)]
        return float(sum(parts)) if parts else math.nan

    def values(self, rows: Sequence[Mapping[str, float]]) -> list[float]:
        """Study objective value(s) over all images: means of per-image values."""
        if self.mode == "composite":
            return [_nanmean([self.per_image(r) for r in rows])]
        out = []
        for t in self.terms:
            if t.target is None:
                out.append(_nanmean([_f(r.get(t.metric)) for r in rows]))
            else:  # per-image distance to the target (only the excess with hinge: upper), then the mean
                target, hinge = t.target, t.hinge
                out.append(_nanmean([distance(_f(r.get(t.metric)), target, least_of(r, t.metric), hinge) for r in rows]))
        return out

    def gates(self, rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, PerImage] | None) -> list[Gate]:
        """Each constraint evaluated on the per-image rows (see :meth:`Constraint.gate`)."""
        return [c.gate(rows, baseline) for c in self.constraints]

    def needs_baseline(self) -> bool:
        return any(c.relative for c in self.constraints)


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
        if t.get("target") is not None and not hinge:
            check_two_sided(info.name, "objective term", "; use hinge: upper")
        scale = float(t.get("scale", 1.0))
        if scale <= 0:
            raise ConfigError(f"objective term '{t['metric']}': scale must be > 0")
        terms.append(Term(t["metric"], float(t.get("weight", 1.0)), scale,
                          None if t.get("target") is None else float(t["target"]), bool(hinge)))
    if not terms:
        raise ConfigError("objective.terms is empty")
    cons = [constraint(name, c) for name, c in (node.get("constraints") or {}).items()]
    return Objective(mode=mode, terms=tuple(terms), constraints=tuple(cons))


BOUNDS = tuple(f.name for f in fields(Constraint) if f.name not in ("metric", "reduce"))  # a Constraint's


def constraint(name: str, node: Mapping[str, Any] | None, where: str = "constraint") -> Constraint:
    """One guard rail from its config node (``objective.constraints.<name>``, ``compare.gates.<name>``:
    the same keys, so conf/guards/study.yaml reads the same in both); ``where`` names it in errors."""
    M.get(name)
    c = {k: v for k, v in (node or {}).items() if v is not None}
    bad = set(c) - {*BOUNDS, "reduce"}
    if bad:
        raise ConfigError(f"{where} '{name}': unknown keys {sorted(bad)}")
    reduce = str(c.pop("reduce", "worst"))
    if reduce not in ("worst", "mean"):
        raise ConfigError(f"{where} '{name}': reduce must be worst (every image) or mean, got {reduce!r}")
    if not c:
        raise ConfigError(f"{where} '{name}' has no bound: it needs max, min, max_relative or min_relative")
    return Constraint(name, **{k: float(v) for k, v in c.items()}, reduce=reduce)
