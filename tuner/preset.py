"""Presets: the production artefact of a study.

A preset is a YAML holding ``model``, ``face`` and ``params`` (the contract), plus the
pipeline options that also shape the output, the model identity (name + weights sha256),
the pipeline version, metric summary, constraints and provenance.  ``tuner enhance
preset=...`` rebuilds exactly the tuned pipeline from it; loading validates the schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from . import PIPELINE_VERSION
from .errors import PresetError
from .files import atomic_write_bytes
from .settings import Settings

SCHEMA_VERSION = 2
TOP_KEYS = {"schema", "model", "face", "params", "pipeline", "model_identity", "face_identity", "pipeline_version",
            "metrics", "constraints", "provenance", "realesrgan_cli", "notes", "max_side"}


def build(settings: Settings, *, model_identity: list[tuple[str, str, float]],
          face_sha256: str | None, metrics: Mapping[str, Any] | None = None,
          constraints: Mapping[str, Any] | None = None, provenance: Mapping[str, Any] | None = None,
          max_side: int | None = None) -> dict[str, Any]:
    """A preset mapping: ``settings.to_dict()`` (the contract) plus identities and records."""
    cli, notes = realesrgan_cli(settings)
    return {
        "schema": SCHEMA_VERSION,
        **settings.to_dict(),
        "max_side": max_side,
        "model_identity": [{"name": n, "sha256": s, "weight": w} for n, s, w in model_identity],
        "face_identity": None if settings.face == "none" else {"name": settings.face, "sha256": face_sha256},
        "pipeline_version": PIPELINE_VERSION,
        "metrics": dict(metrics or {}),
        "constraints": dict(constraints or {}),
        "provenance": dict(provenance or {}),
        "realesrgan_cli": cli,
        "notes": notes,
    }


def realesrgan_cli(st: Settings) -> tuple[str, list[str]]:
    """The equivalent ``inference_realesrgan.py`` flags, and what they cannot express."""
    from .weights import catalogue

    partner = catalogue("model")[st.model].denoise_partner
    flags = [f"-n {st.model}", f"-t {0 if st.tile == 'auto' else st.tile}",
             f"--tile_pad {st.tile_pad}", f"--pre_pad {st.pre_pad}", "--fp32"]
    if st.outscale is not None:
        flags.append(f"-s {st.outscale:g}")
    notes: list[str] = []
    if st.tile == "auto":
        notes.append("tile=auto: tuner picks the tile per image from the memory budget (the log names it); "
                     "inference_realesrgan.py needs a fixed -t")
    if st.denoise is not None:
        if st.model == "realesr-general-x4v3":
            flags.append(f"-dn {st.denoise:g}")
        else:
            notes.append(f"denoise={st.denoise:g} interpolates {st.model} with {partner}: "
                         "inference_realesrgan.py only offers -dn for realesr-general-x4v3")
    if st.face != "none" and st.face_weight > 0:
        flags.append("--face_enhance")
        notes.append(f"face_weight={st.face_weight:g}: inference_realesrgan.py always pastes faces fully "
                     "(GFPGAN's weight argument is a no-op); only tuner applies this alpha")
    if st.blend > 0:
        notes.append(f"blend={st.blend:g} ({st.blend_variant}): no inference_realesrgan.py flag; only tuner applies it")
    if st.prefilter:
        notes.append(f"prefilter={st.prefilter:g}: the input's non-local-means denoise is a tuner feature")
    if st.texture_target is not None:
        notes.append(f"texture_target={st.texture_target:g}: the skin texture policy is a tuner feature")
    if st.overlap:
        notes.append(f"overlap={st.overlap}: feathered tiles are a tuner feature")
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
    Settings.from_dict(data, where=f"preset {p}")
    if data.get("pipeline_version") not in (None, PIPELINE_VERSION):
        raise PresetError(
            f"preset {p} was tuned with pipeline version {data['pipeline_version']}, this tuner is {PIPELINE_VERSION}: "
            "outputs would differ; re-run the study"
        )
    return data


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


def settings_of(preset: Mapping[str, Any]) -> Settings:
    """The preset's settings (validated)."""
    return Settings.from_dict(preset, where="preset")


def overrides(preset: Mapping[str, Any]) -> list[str]:
    """Hydra overrides that turn a composed config into the preset's pipeline."""
    return settings_of(preset).overrides()
