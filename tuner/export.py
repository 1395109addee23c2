"""From a finished study to a preset: per-image gates rechecked against the final baseline,
the best feasible trial (or a chosen one), and the preset built from its records."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import objective as O
from . import preset as presets
from .errors import ConfigError
from .settings import Settings
from .storage import StudySettings, make_storage, redact_url

log = logging.getLogger("tuner")

SCHEMA = 3  # of the study's ``tuner`` user attribute; a study written by another schema cannot be resumed


def _rows_of(trial: Any) -> list[dict[str, Any]]:
    """A finished trial's per-image rows for the gates, from its user attributes."""
    per = trial.user_attrs.get("per_image") or {}
    images = sorted({im for vals in per.values() for im in vals})
    return [{"image": im, **{m: (math.nan if per[m].get(im) is None else per[m][im]) for m in per}} for im in images]


def recheck(study: Any, objective: O.Objective) -> list[tuple[Any, list[O.Gate]]]:
    """Completed trials with their per-image gates recomputed against the final baseline."""
    from optuna.trial import TrialState

    baseline = study.user_attrs.get("baseline")
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        try:
            out.append((t, objective.gates(_rows_of(t), baseline)))
        except O.BaselineMissing as e:
            raise ConfigError(f"study '{study.study_name}': {e}; run `tuner tune study.name={study.study_name}` "
                              "again to compute it") from e
    return out


def holds(gates: list[O.Gate]) -> bool:
    return all(g.violation <= 0 for g in gates)


def best_trial(study: Any, objective: O.Objective, *, allow_infeasible: bool, number: int | None = None,
               keep: Callable[[Any], bool] | None = None) -> tuple[Any, list[O.Gate]]:
    """The best trial whose gates hold on every image (or trial ``number``), among those ``keep``
    accepts."""
    trials = [(t, g) for t, g in recheck(study, objective) if keep is None or keep(t)]
    if number is not None:
        for t, g in trials:
            if t.number == number:
                if not holds(g) and not allow_infeasible:
                    raise ConfigError(f"trial {number} violates {_violated(objective, g)}; "
                                      "pass allow_infeasible=true to export it")
                return t, g
        raise ConfigError(f"trial {number} is not a completed trial of study '{study.study_name}'")
    feasible = [(t, g) for t, g in trials if holds(g)]
    pool = feasible if feasible else (trials if allow_infeasible else [])
    if not pool:
        raise ConfigError(
            f"study '{study.study_name}' has no completed trial that satisfies the constraints on every image "
            f"({len(trials)} completed){why_infeasible(trials, objective)}; run more trials, relax conf/objective, "
            "or allow it (tuner tune study.allow_infeasible=true; tuner export allow_infeasible=true)"
        )
    if objective.mode == "composite":
        return min(pool, key=lambda tg: tg[0].values[0])
    # multi-objective: rank the feasible Pareto front by the sum of min-max normalised objectives
    vals = np.array([[v if d == "minimize" else -v for v, d in zip(t.values, objective.directions, strict=True)]
                     for t, _ in pool])
    norm = (vals - vals.min(0)) / np.maximum(vals.max(0) - vals.min(0), 1e-12)
    return pool[int(np.argmin(norm.sum(1)))]


def _violated(objective: O.Objective, gates: list[O.Gate]) -> list[str]:
    return [f"{c.describe()}: {x.value:.4g}" + (f" on {x.image}" if x.image else "")
            for c, x in zip(objective.constraints, gates, strict=True) if x.violation > 0]


def why_infeasible(trials: list[tuple[Any, list[O.Gate]]], objective: O.Objective) -> str:
    """What kept every trial out: per constraint, how many trials broke it; and the nearest trial (the
    fewest constraints broken, then the best value) with what it broke, worst image each."""
    if not trials:
        return ""
    broken = {c.describe(): sum(g[i].violation > 0 for _, g in trials) for i, c in enumerate(objective.constraints)}
    sign = 1.0 if objective.directions[0] == "minimize" else -1.0  # then the best first objective
    t, g = min(trials, key=lambda tg: (sum(x.violation > 0 for x in tg[1]), sign * tg[0].values[0]))
    counts = ", ".join(f"{k} {n}/{len(trials)}" for k, n in broken.items() if n)
    return f"; trials breaking each constraint: {counts}; nearest: trial {t.number}, which breaks {_violated(objective, g)}"


def build_preset(study: Any, trial: Any, gates: list[O.Gate], objective: O.Objective) -> dict[str, Any]:
    info = study.user_attrs["tuner"]
    settings = Settings.from_dict(trial.user_attrs["settings"], where=f"trial {trial.number}")
    ident = [tuple(x) for x in trial.user_attrs.get("model_identity", [])]
    constraints = {c.describe(): {"reduce": "every image (worst shown)" if c.reduce == "worst" else "image mean",
                                  "value": None if math.isnan(g.value) else round(g.value, 6),
                                  **({"worst_image": g.image} if g.image else {}), "holds": g.violation <= 0}
                   for c, g in zip(objective.constraints, gates, strict=True)}
    return presets.build(
        settings, model_identity=ident,  # type: ignore[arg-type]
        face_sha256=trial.user_attrs.get("face_sha256"), metrics=trial.user_attrs.get("metrics") or {}, constraints=constraints,
        max_side=info.get("max_side"),
        provenance={"study": study.study_name, "trial": trial.number, "values": list(trial.values),
                    "dataset": info.get("dataset"), "dataset_hash": info.get("dataset_hash"),
                    "n_images": info.get("n_images"), "tuned_at_max_side": info.get("max_side"),
                    "dropped_knobs": info.get("dropped_knobs", []), "versions": info.get("versions", {}),
                    "all_constraints_hold": holds(gates)},
    )


def run_export(st: StudySettings, out: Path, *, number: int | None = None, allow_infeasible: bool = False) -> int:
    """Write the preset of study ``st``'s best trial (or trial ``number``) to ``out``."""
    import optuna

    if st.storage.startswith("sqlite") and not Path(st.storage.split("///", 1)[-1]).exists():
        raise ConfigError(f"no study storage at {redact_url(st.storage)}; run `tuner tune study.name={st.name}` first")
    try:
        study = optuna.load_study(study_name=st.name, storage=make_storage(st))
    except KeyError as e:
        raise ConfigError(f"study '{st.name}' not found in {redact_url(st.storage)}") from e
    info = study.user_attrs.get("tuner") or {}
    if info.get("schema") != SCHEMA:
        raise ConfigError(f"study '{st.name}' was written by another tuner version (schema {info.get('schema')}, "
                          f"this is {SCHEMA}); re-run it under a new study.name")
    objective = O.from_mapping(info["objective"])
    trial, gates = best_trial(study, objective, allow_infeasible=allow_infeasible, number=number)
    presets.save(build_preset(study, trial, gates, objective), out)
    log.info("exported trial %d of study %s to %s (constraints hold on every image: %s)", trial.number, st.name,
             out, holds(gates))
    return 0
