"""Presets: the production artefact of a study.

A preset is a YAML holding ``model``, ``face`` and ``params`` (the contract), plus the
pipeline options that also shape the output, the model identity (name + weights sha256),
the pipeline version, metric summary, constraints and provenance.  ``tuner enhance
preset=...`` rebuilds exactly the tuned pipeline from it; loading validates the schema.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from . import PIPELINE_VERSION
from .errors import PresetError
from .images import atomic_write_bytes
from .pipeline import Params, PipelineSpec

SCHEMA_VERSION = 1
PIPELINE_KEYS = {"tile_pad", "pre_pad", "overlap", "outscale", "blend_variant", "face_upsample", "detector",
                 "detection_threshold"}
TOP_KEYS = {"schema", "model", "face", "params", "pipeline", "model_identity", "face_identity", "pipeline_version",
            "metrics", "constraints", "provenance", "realesrgan_cli", "notes", "max_side"}


def build(spec: PipelineSpec, params: Params, *, model_identity: list[tuple[str, str, float]],
          face_sha256: str | None, metrics: Mapping[str, Any] | None = None,
          constraints: Mapping[str, Any] | None = None, provenance: Mapping[str, Any] | None = None,
          max_side: int | None = None) -> dict[str, Any]:
    """A preset mapping for ``spec`` + ``params``."""
    cli, notes = realesrgan_cli(spec, params)
    return {
        "schema": SCHEMA_VERSION,
        "model": spec.model.name,
        "face": spec.face.name if spec.face else "none",
        "params": {"tile": params.tile, "denoise": params.denoise, "face_weight": params.face_weight,
                   "blend": params.blend},
        "pipeline": {"tile_pad": spec.tile_pad, "pre_pad": spec.pre_pad, "overlap": spec.overlap,
                     "outscale": spec.outscale, "blend_variant": spec.blend_variant,
                     "face_upsample": spec.face_upsample, "detector": spec.detector,
                     "detection_threshold": spec.detection_threshold},
        "max_side": max_side,
        "model_identity": [{"name": n, "sha256": s, "weight": w} for n, s, w in model_identity],
        "face_identity": None if spec.face is None else {"name": spec.face.name, "sha256": face_sha256},
        "pipeline_version": PIPELINE_VERSION,
        "metrics": dict(metrics or {}),
        "constraints": dict(constraints or {}),
        "provenance": dict(provenance or {}),
        "realesrgan_cli": cli,
        "notes": notes,
    }


def realesrgan_cli(spec: PipelineSpec, params: Params) -> tuple[str, list[str]]:
    """The equivalent ``inference_realesrgan.py`` flags, and what they cannot express."""
    flags = [f"-n {spec.model.name}", f"-t {0 if params.tile == 'auto' else params.tile}",
             f"--tile_pad {spec.tile_pad}", f"--pre_pad {spec.pre_pad}", "--fp32"]
    if spec.outscale is not None:
        flags.append(f"-s {spec.outscale:g}")
    notes: list[str] = []
    if params.tile == "auto":
        notes.append("tile=auto: tuner picks the tile per image from the memory budget (the log names it); "
                     "inference_realesrgan.py needs a fixed -t")
    if params.denoise is not None:
        if spec.model.name == "realesr-general-x4v3":
            flags.append(f"-dn {params.denoise:g}")
        else:
            notes.append(f"denoise={params.denoise:g} interpolates {spec.model.name} with {spec.model.denoise_partner}: "
                         "inference_realesrgan.py only offers -dn for realesr-general-x4v3")
    if spec.face is not None and params.face_weight > 0:
        flags.append("--face_enhance")
        notes.append(f"face_weight={params.face_weight:g}: inference_realesrgan.py always pastes faces fully "
                     "(GFPGAN's weight argument is a no-op); only tuner applies this alpha")
    if params.blend > 0:
        notes.append(f"blend={params.blend:g} ({spec.blend_variant}): no inference_realesrgan.py flag; only tuner applies it")
    if spec.overlap:
        notes.append(f"overlap={spec.overlap}: feathered tiles are a tuner feature")
    return "python inference_realesrgan.py " + " ".join(flags), notes


def save(preset: Mapping[str, Any], path: str | Path) -> Path:
    p = Path(path)
    atomic_write_bytes(p, yaml.safe_dump(dict(preset), sort_keys=False).encode())
    return p


def load(path: str | Path) -> dict[str, Any]:
    """Read and validate a preset; raises :class:`PresetError` naming the problem."""
    p = Path(path)
    if not p.is_file():
        raise PresetError(f"preset {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise PresetError(f"preset {p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise PresetError(f"preset {p} must be a mapping with model, face and params")
    missing = {"model", "face", "params"} - set(data)
    if missing:
        raise PresetError(f"preset {p} lacks {sorted(missing)}")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise PresetError(f"preset {p} has unknown keys {sorted(unknown)}")
    _refuse_targets(data, p)
    validate_contract(data, p)
    if data.get("pipeline_version") not in (None, PIPELINE_VERSION):
        raise PresetError(
            f"preset {p} was tuned with pipeline version {data['pipeline_version']}, this tuner is {PIPELINE_VERSION}: "
            "outputs would differ; re-run the study"
        )
    return data


# a preset is data, never code: its values become Hydra overrides, so a string that Hydra or
# OmegaConf would interpret (interpolations ${...}, lists, another key=value) is refused
_SAFE_STR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
PARAM_KEYS = {"tile", "denoise", "face_weight", "blend"}
_PIPELINE_TYPES: dict[str, tuple[type, ...]] = {
    "tile_pad": (int,), "pre_pad": (int,), "overlap": (int,), "outscale": (int, float, type(None)),
    "blend_variant": (str,), "face_upsample": (bool,), "detector": (str,), "detection_threshold": (int, float)}
_CHOICES = {"blend_variant": ("global", "skin", "frequency"), "detector": ("retinaface", "retinaface_resnet50")}


def _refuse_targets(node: Any, p: Path, where: str = "") -> None:
    """Refuse Hydra instantiation keys anywhere in a preset: it must never name code to run."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            if str(k).startswith("_") and str(k).endswith("_"):
                raise PresetError(f"preset {p}: key '{where}{k}' is not allowed (a preset is data; Hydra keys such as "
                                  "_target_ are refused)")
            _refuse_targets(v, p, f"{where}{k}.")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _refuse_targets(v, p, f"{where}{i}.")


def validate_contract(data: Mapping[str, Any], p: Path | str) -> None:
    """Check what becomes Hydra overrides: names against the catalogue, values against the schema."""
    from .weights import catalogue

    if not isinstance(data["model"], str) or not isinstance(data["face"], str):
        raise PresetError(f"preset {p}: model and face must be names (see conf/model, conf/face)")
    models, faces = catalogue("model"), catalogue("face")
    if data["model"] not in models:
        raise PresetError(f"preset {p}: model {data['model']!r} is not in the catalogue ({sorted(models)})")
    if data["face"] != "none" and data["face"] not in faces:
        raise PresetError(f"preset {p}: face {data['face']!r} is not in the catalogue ({['none', *sorted(faces)]})")
    params = data["params"] or {}
    if not isinstance(params, Mapping) or set(params) - PARAM_KEYS:
        raise PresetError(f"preset {p}: params must be a mapping of {sorted(PARAM_KEYS)}, got {params!r}")
    for k, v in params.items():
        if k == "tile" and v == "auto":
            continue  # chosen per image from the memory budget, recorded in the log
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v))):
            raise PresetError(f"preset {p}: params.{k} must be a number or null, got {v!r}")
    try:
        Params.from_mapping(params)
    except Exception as e:
        raise PresetError(f"preset {p}: bad params: {e}") from e
    pipe = data.get("pipeline") or {}
    if not isinstance(pipe, Mapping):
        raise PresetError(f"preset {p}: pipeline must be a mapping")
    if set(pipe) - PIPELINE_KEYS:
        raise PresetError(f"preset {p}: unknown pipeline keys {sorted(set(pipe) - PIPELINE_KEYS)}")
    for k, v in pipe.items():
        types = _PIPELINE_TYPES[k]
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            raise PresetError(f"preset {p}: pipeline.{k} has the wrong type ({v!r})")
        if isinstance(v, str) and (not _SAFE_STR.fullmatch(v) or v not in _CHOICES.get(k, (v,))):
            raise PresetError(f"preset {p}: pipeline.{k}={v!r} is not one of {_CHOICES.get(k)}")
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue  # strings and flags are checked above
        if k in ("tile_pad", "pre_pad", "overlap") and v < 0:
            raise PresetError(f"preset {p}: pipeline.{k} must be >= 0, got {v}")
        if k == "outscale" and not (math.isfinite(v) and 0 < v <= 16):
            raise PresetError(f"preset {p}: pipeline.outscale must be a finite scale in (0, 16] or null, got {v}")
        if k == "detection_threshold" and not (math.isfinite(v) and 0 < v <= 1):
            raise PresetError(f"preset {p}: pipeline.detection_threshold must be in (0, 1], got {v}")


def overrides(preset: Mapping[str, Any]) -> list[str]:
    """Hydra overrides that turn a composed config into the preset's pipeline."""
    out = [f"model={preset['model']}", f"face={preset['face']}"]
    for k, v in (preset.get("params") or {}).items():
        out.append(f"params.{k}={'null' if v is None else v}")
    pipe = preset.get("pipeline") or {}
    for k in ("tile_pad", "pre_pad", "overlap", "outscale"):
        if k in pipe:
            out.append(f"upscale.{k}={'null' if pipe[k] is None else pipe[k]}")
    if "blend_variant" in pipe:
        out.append(f"blend_variant={pipe['blend_variant']}")
    if preset["face"] != "none":
        for k, ck in (("face_upsample", "upsample"), ("detector", "detector"), ("detection_threshold", "detection_threshold")):
            if k in pipe:
                out.append(f"face.{ck}={pipe[k]}")
    return out
