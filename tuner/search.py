"""The search space: knobs read from ``conf/search/*.yaml``, samplers, and drawing a trial's settings.

Knobs are drawn only where they act (``face_upsample`` only with a face weight > 0,
``blend_variant`` only with a blend > 0, ``denoise`` only with a DNI partner), and knobs
whose weights cannot be had here are dropped loudly (or refused with ``study.strict``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import ConfigError, WeightsError, check_keys
from .pipeline import Params, PipelineSpec
from .weights import ModelSpec, WeightStore

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
    """Validate ``conf/search/*.yaml``'s ``params`` mapping."""
    check_keys(node, {"params", "description"}, "search")
    out = {}
    for name, k in (node.get("params") or {}).items():
        if name not in KNOB_NAMES:
            raise ConfigError(f"search.params.{name}: unknown knob; searchable: {KNOB_NAMES}")
        if k is None:
            continue  # removed by an experiment config
        check_keys(k, {"type", "choices", "low", "high", "step", "log"}, f"search.params.{name}")
        t = k.get("type")
        if name == "texture_target":  # trial 0 runs the model as shipped: "off" (null) must be a choice
            choices = list(k.get("choices") or [])
            if t != "categorical" or None not in choices or any(
                    c is not None and not -3.0 <= float(c) <= 8.0 for c in choices):
                raise ConfigError("search.params.texture_target must be categorical with null (off) among its "
                                  f"choices and the others in [-3, 8] octaves, got {k}")
        if t == "categorical":
            if not k.get("choices"):
                raise ConfigError(f"search.params.{name}: categorical needs choices")
            out[name] = Knob(name, t, tuple(k["choices"]))
        elif t in ("float", "int"):
            lo, hi = float(k.get("low", 0)), float(k.get("high", 1))
            if lo > hi:
                raise ConfigError(f"search.params.{name}: low {lo} > high {hi}")
            if name in ("denoise", "face_weight", "blend", "prefilter") and not (0 <= lo and hi <= 1):
                raise ConfigError(f"search.params.{name}: range must lie in [0, 1], got [{lo}, {hi}]")
            out[name] = Knob(name, t, (), lo, hi, k.get("step"), bool(k.get("log", False)))
        else:
            raise ConfigError(f"search.params.{name}: type must be categorical, float or int, got {t!r}")
    if "tile" in out and out["tile"].type == "categorical" and any(int(c) < 0 for c in out["tile"].choices):
        raise ConfigError("search.params.tile: choices must be >= 0")
    return out


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
    grid: dict[str, list[Any]] = {}
    for k in space.values():
        if k.type != "categorical":
            if k.step is None:
                raise ConfigError(f"sampler=grid needs a step for search.params.{k.name}")
            grid[k.name] = [float(v) for v in np.arange(k.low, k.high + 1e-9, k.step).round(6)]
        else:
            grid[k.name] = list(k.choices)
    return S.GridSampler(grid, seed=seed)


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
        name = sp["model"].suggest(trial)
        if name not in models:
            raise ConfigError(f"search.params.model: unknown model {name!r}")
        m = models[name]
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
        if face_weight > 0 and "face_upsample" in sp:
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
