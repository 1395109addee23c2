"""One exception base for the project; every message says what to do next."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# exit codes of every command: 0 = all done; 1 = error; 3 = done, but some inputs were bad and skipped
EXIT_OK, EXIT_ERROR, EXIT_PARTIAL = 0, 1, 3
# `tuner compare` is a CI gate: 0 = pass, 1 = the candidate fails, 2 = the comparison could not run
EXIT_COMPARE_FAIL, EXIT_COMPARE_ERROR = 1, 2


class TunerError(Exception):
    """Base class of every error tuner raises on purpose."""


class ConfigError(TunerError):
    """The composed configuration is invalid (unknown key, value out of range, missing file)."""


class ImageError(TunerError):
    """An input image cannot be used; the message names the file."""


class WeightsError(TunerError):
    """A model file is missing, corrupt, refused (sha256) or unsafe to load."""


class PipelineError(TunerError):
    """A pipeline stage (upscale tile, face restoration) failed."""


class MetricError(TunerError):
    """A metric is unknown or cannot run here (weights, missing faces)."""


class PresetError(TunerError):
    """A preset file does not match the schema."""


def check_keys(node: Mapping[str, Any], allowed: set[str], where: str) -> None:
    """Refuse keys of a config node outside ``allowed``, suggesting the closest allowed one."""
    unknown = set(node) - allowed
    if unknown:
        import difflib

        hints = {k: difflib.get_close_matches(k, allowed, n=1) for k in unknown}
        hint = "; ".join(f"'{k}'" + (f" (did you mean '{v[0]}'?)" if v else "") for k, v in hints.items())
        raise ConfigError(f"unknown key(s) in {where}: {hint}. Allowed: {sorted(allowed)}")


def flag(node: Any, key: str, default: bool, where: str = "") -> bool:
    """A true/false setting: a real boolean, or an error naming it.  ``bool()`` of what Hydra passes
    would read ``=no``, ``=off`` or ``=0`` (strings) as true -- e.g. allow_infeasible=no exporting an
    infeasible trial."""
    v = node.get(key, default) if node is not None else default
    if isinstance(v, bool):
        return v
    raise ConfigError(f"{where}{key} must be true or false, got {v!r}")


INSTANTIATE_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")


def refuse_instantiation(cfg: Any, where: str = "") -> None:
    """tuner never instantiates objects from configs (no ``hydra.utils.instantiate``): a Hydra
    ``_target_`` (or ``_args_`` ...) anywhere in a composed config or a preset is an error, not a
    key silently carried along until some later code might call it."""
    if isinstance(cfg, Mapping):
        for k, v in cfg.items():
            if k in INSTANTIATE_KEYS:
                raise ConfigError(f"{where + '.' if where else ''}{k}: tuner never instantiates objects from a "
                                  f"config; Hydra's {', '.join(INSTANTIATE_KEYS)} are refused")
            refuse_instantiation(v, f"{where + '.' if where else ''}{k}")
    elif isinstance(cfg, list):
        for i, v in enumerate(cfg):
            refuse_instantiation(v, f"{where}[{i}]")
