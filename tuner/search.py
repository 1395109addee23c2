"""The search space: knobs read from ``conf/search/*.yaml``, samplers, and drawing a trial's settings.

Knobs are drawn only where they act (``face_upsample`` only with a face weight > 0,
``blend_variant`` only with a blend > 0, ``denoise`` only with a DNI partner), and knobs
whose weights cannot be had here are dropped loudly (or refused with ``study.strict``).
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import ConfigError, WeightsError, check_keys, flag
from .pipeline import Params, PipelineSpec
from .spec import TILE_AUTO
from .weights import ModelSpec, WeightStore, catalogue

log = logging.getLogger("tuner")

FACE_KNOBS = ("face_weight", "face_upsample")
KNOB_NAMES = ("tile", "denoise", "prefilter", "face_weight", "blend", "blend_variant", "face_upsample",
              "texture_target", "model")


@dataclass(frozen=True)
class Knob:
    name: str
    type: str  # categorical | float | int
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 1.0
    step: float | None = None
    log: bool = False

    def suggest(self, trial: Any) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


def search_space(node: Mapping[str, Any]) -> dict[str, Knob]:
    """Validate ``conf/search/*.yaml``'s ``params`` mapping: every choice and both ends of every
    range must be a value the pipeline takes (:class:`Params`' own checks, models from the
    catalogue), so a bad value is refused here, naming the knob, not when a trial draws it."""
    check_keys(node, {"params", "description"}, "search")
    out = {}
    for name, k in (node.get("params") or {}).items():
        if name not in KNOB_NAMES:
            raise ConfigError(f"search.params.{name}: unknown knob; searchable: {KNOB_NAMES}")
        if k is None:
            continue  # removed by an experiment config
        if not isinstance(k, Mapping):
            raise ConfigError(f"search.params.{name} must be a mapping (type, choices or low/high), got {k!r}")
        check_keys(k, {"type", "choices", "low", "high", "step", "log"}, f"search.params.{name}")
        t = k.get("type")
        if name == "texture_target":  # trial 0 runs the model as shipped: "off" (null) must be a choice
            choices = k.get("choices")
            if t != "categorical" or not isinstance(choices, (list, tuple)) or None not in choices:
                raise ConfigError("search.params.texture_target must be categorical with null (off) among its "
                                  f"choices, got {k}")
        if t == "categorical":
            choices = k.get("choices")
            if not choices or not isinstance(choices, (list, tuple)):
                raise ConfigError(f"search.params.{name}: categorical needs a list of choices, got {choices!r}")
            for c in choices:
                check_value(name, c)
            out[name] = Knob(name, t, tuple(choices))
        elif t in ("float", "int"):
            lo, hi, step = _number(k, name, "low", 0), _number(k, name, "high", 1), k.get("step")
            if lo > hi:
                raise ConfigError(f"search.params.{name}: low {lo} > high {hi}")
            log_ = flag(k, "log", False, f"search.params.{name}.")
            if step is not None and _number(k, name, "step", 0) <= 0:
                raise ConfigError(f"search.params.{name}.step must be > 0 or null, got {step!r}")
            if log_ and lo <= 0:
                raise ConfigError(f"search.params.{name}: log: true needs low > 0 (a log scale has no 0 and no "
                                  f"negative values), got low {lo}; use log: false or a positive low")
            if log_ and step is not None and not (t == "int" and float(step) == 1):
                raise ConfigError(f"search.params.{name}: log: true takes no step (Optuna draws log-uniformly), "
                                  f"got step {step}")
            if t == "int" and not all(float(v).is_integer() for v in (lo, hi, step or 1)):
                raise ConfigError(f"search.params.{name}: type int needs integer low, high and step, got "
                                  f"[{lo}, {hi}] step {step}")
            if name == "tile" and t != "int":
                raise ConfigError("search.params.tile: a tile is a whole number of input pixels: use type int or "
                                  f"categorical, got type {t}")
            for end, v in (("low", lo), ("high", hi)):
                check_value(name, int(v) if t == "int" else v, what=f"{end} ")
            out[name] = Knob(name, t, (), lo, hi, step, log_)
        else:
            raise ConfigError(f"search.params.{name}: type must be categorical, float or int, got {t!r}")
    return out


def _number(k: Mapping[str, Any], name: str, key: str, default: float) -> float:
    v = k.get(key, default)
    try:
        if isinstance(v, bool):
            raise TypeError
        return float(v)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"search.params.{name}.{key} must be a number, got {v!r}") from e


def check_value(name: str, value: Any, *, what: str = "") -> None:
    """Refuse a value of knob ``name`` that the pipeline would refuse when a trial runs it (the
    rules of :class:`Params`; model names from the catalogue)."""
    where = f"search.params.{name}: {what}{value!r}"
    if name == "model":
        models = catalogue("model")
        if not isinstance(value, str) or value not in models:
            close = difflib.get_close_matches(str(value), models, n=1)
            raise ConfigError(f"{where} is not a model of the catalogue" + (f" (did you mean {close[0]!r}?)" if close
                              else "") + f"; known: {sorted(models)}")
        return
    if name == "tile" and isinstance(value, str) and value.strip().lower() == TILE_AUTO:
        raise ConfigError(f"{where} cannot be searched: it picks each image's tile from the free memory of the "
                          "machine that runs it, so workers could score different tiles and the preset would not "
                          "reproduce; give integer tile choices (0 = the whole image)")
    if value is None and name != "texture_target":
        raise ConfigError(f"{where} is not a value of this knob (null is a choice of texture_target only: the "
                          "policy off)")
    try:
        Params(**{name: value})
    except (ConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"{where} is not a value the pipeline takes: {e}") from e


def grid_values(space: Mapping[str, Knob]) -> dict[str, list[Any]]:
    """The points of ``study.sampler=grid`` along each knob (a float or int range needs a step)."""
    grid: dict[str, list[Any]] = {}
    for k in space.values():
        if k.type == "categorical":
            grid[k.name] = list(k.choices)
            continue
        step = k.step if k.step is not None else (1 if k.type == "int" else None)
        if step is None:
            raise ConfigError(f"study.sampler=grid needs a step for search.params.{k.name} (a float range has no "
                              f"grid), e.g. search.params.{k.name}.step=0.25")
        vals = np.arange(k.low, k.high + 1e-9, float(step)).round(6)
        grid[k.name] = [int(v) for v in vals] if k.type == "int" else [float(v) for v in vals]
    return grid


def make_sampler(kind: str, space: Mapping[str, Knob], *, seed: int, n_startup_trials: int) -> Any:
    """An Optuna sampler by name (tpe, gp, nsga2, random, grid), seeded."""
    import optuna.samplers as S

    if kind == "tpe":
        return S.TPESampler(seed=seed, n_startup_trials=n_startup_trials, multivariate=True, group=True)
    if kind == "gp":
        return S.GPSampler(seed=seed, n_startup_trials=n_startup_trials)
    if kind == "nsga2":
        return S.NSGAIISampler(seed=seed)
    if kind == "random":
        return S.RandomSampler(seed=seed)
    # One order of the grid for every trial and worker: GridSampler gives a trial the point at its
    # grid id in the grid shuffled by the sampler's seed, and the study builds a sampler per trial
    # seeded by the trial's number (trial_seed): per-trial shuffles would send trials to random
    # points, repeating some and never running others.
    return S.GridSampler(grid_values(space), seed=0)


def grid_repeat(study: Any, number: int) -> bool:
    """Whether trial ``number`` of a grid study would only run again a point that has run: once
    every point has run, Optuna's GridSampler hands out visited points (study.n_trials larger than
    the grid).  The enqueued baseline and re-queued retries of lost trials are not repeats."""
    import optuna

    sampler = study.sampler
    if not isinstance(sampler, optuna.samplers.GridSampler):
        return False
    frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if frozen is None or {"fixed_params", "failed_trial"} & set(frozen.system_attrs):
        return False
    return bool(sampler.is_exhausted(study))


def grid_taken(trials: Sequence[Any], sampler: str, space: Mapping[str, Knob]) -> bool:
    """Whether a grid study (``sampler`` "grid"; its ``trials``) has no point left that has not started, but some that
    have not finished: a trial asked now would be handed a point another worker is running (Optuna's
    GridSampler does so in case that trial fails) and run it twice.  The caller waits instead, where a
    heartbeat can tell a dead worker's trial from a live one: a killed worker's trial is then failed and
    re-queued (up to study.max_retry), and a trial waiting to be asked makes this False.  A point whose
    trial fails with an error is not run again (GridSampler counts it as visited, as with one worker)."""
    if sampler != "grid":
        return False
    if any(t.state.name == "WAITING" for t in trials):
        return False
    points = set(range(math.prod(len(v) for v in grid_values(space).values())))
    finished = {t.system_attrs["grid_id"] for t in trials if "grid_id" in t.system_attrs and t.state.is_finished()}
    running = {t.system_attrs["grid_id"] for t in trials if "grid_id" in t.system_attrs and t.state.name == "RUNNING"}
    return not points - finished - running and bool(points - finished)


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed for the trial numbered ``number``: workers that share a study draw
    different random values (one seed in every worker would hand each of them the same
    sequence, so their startup trials would repeat each other's parameters), and a trial's
    draw does not depend on which worker asks for it."""
    return int(np.random.SeedSequence([int(seed), int(number)]).generate_state(1)[0])


def resolve_knobs(base: PipelineSpec, space: dict[str, Knob], store: WeightStore, strict: bool) -> tuple[
        PipelineSpec, dict[str, Knob], list[str]]:
    """Drop knobs whose weights cannot be had here (loudly), or fail with ``study.strict=true``."""
    dropped: list[str] = []

    def unavailable(knob: str, why: str) -> None:
        msg = f"knob '{knob}' cannot be tuned here: {why}"
        if strict:
            raise ConfigError(msg + " (study.strict=true)")
        log.warning("!!! %s -- dropped from the search space; recorded in the preset", msg)
        dropped.append(f"{knob}: {why}")

    if "denoise" in space:
        if not base.model.denoise_partner or base.partner is None:
            unavailable("denoise", f"model '{base.model.name}' has no interpolation partner")
            space.pop("denoise")
        else:
            try:
                store.resolve(base.partner)
            except WeightsError as e:
                unavailable("denoise", str(e))
                space.pop("denoise")
    face_knobs = [k for k in FACE_KNOBS if k in space]
    if base.face is not None:
        try:
            store.resolve(base.face)
        except WeightsError as e:
            for k in face_knobs:
                unavailable(k, str(e))
                space.pop(k)
            if not strict:
                base = replace(base, face=None)
    elif face_knobs:
        for k in face_knobs:
            unavailable(k, "face=none")
            space.pop(k)
    return base, space, dropped


def suggest(trial: Any, space: Mapping[str, Knob], base: PipelineSpec, base_params: Params,
            models: Mapping[str, ModelSpec]) -> tuple[PipelineSpec, Params]:
    """Draw this trial's settings; conditional knobs are drawn only where they act."""
    spec, p = base, base_params
    sp = space
    if "model" in sp:
        m = models[sp["model"].suggest(trial)]  # search_space checked the names against the catalogue
        spec = replace(spec, model=m, partner=models.get(m.denoise_partner or ""))
    tile: int | str = int(sp["tile"].suggest(trial)) if "tile" in sp else p.tile
    denoise = p.denoise
    if "denoise" in sp and spec.model.denoise_partner and spec.partner is not None:
        denoise = float(sp["denoise"].suggest(trial))
    elif spec.model.denoise_partner is None:
        denoise = None
    face_weight, face_upsample = p.face_weight, p.face_upsample
    if spec.face is not None and "face_weight" in sp:
        face_weight = float(sp["face_weight"].suggest(trial))
    if spec.face is not None and face_weight > 0 and "face_upsample" in sp:  # the weight drawn or fixed
        face_upsample = bool(sp["face_upsample"].suggest(trial))
    blend, variant = (float(sp["blend"].suggest(trial)) if "blend" in sp else p.blend), p.blend_variant
    if blend > 0 and "blend_variant" in sp:
        variant = str(sp["blend_variant"].suggest(trial))
    if spec.overlap and isinstance(tile, int) and tile and spec.overlap * 2 >= tile:
        spec = replace(spec, overlap=max(tile // 2 - 1, 0))
    pre = float(sp["prefilter"].suggest(trial)) if "prefilter" in sp else p.prefilter
    target = sp["texture_target"].suggest(trial) if "texture_target" in sp else p.texture_target
    return spec, Params(tile=tile, denoise=denoise, face_weight=face_weight, blend=blend, blend_variant=variant,
                        face_upsample=face_upsample, texture_target=None if target is None else float(target),
                        texture_anchor=p.texture_anchor, prefilter=pre)
