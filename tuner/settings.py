"""The one settings schema: everything a preset fixes, with one to-dict/from-dict pair.

``Settings`` is what a study's trial records, what ``tuner export`` writes into a preset,
and what ``tuner enhance preset=...`` applies: the model and face model (catalogue names),
the four knobs (``tile``, ``denoise``, ``face_weight``, ``blend``) and every pipeline option
that shapes the output (``blend_variant``, ``face_upsample``, ``tile_pad``, ``pre_pad``,
``overlap``, ``outscale``, ``half``, ``detector``, ``detection_threshold``).  The device is
not part of it (a preset runs on any machine; CPU and CUDA agree to about 1 LSB).

``from_dict`` validates untrusted input (a preset file): names against the catalogue, every
value against its type and range, and strings that Hydra would interpret are refused, because
``overrides`` turns the settings into Hydra overrides.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .blend import VARIANTS
from .errors import PresetError
from .faces import DETECTORS
from .pipeline import Params, PipelineSpec
from .texture import ANCHORS
from .weights import ModelSpec

PARAM_KEYS = ("tile", "denoise", "face_weight", "blend", "texture_target", "prefilter")
UPSCALE_KEYS = ("tile_pad", "pre_pad", "overlap", "outscale", "half")  # conf's `upscale` node
PIPELINE_KEYS = (*UPSCALE_KEYS, "blend_variant", "face_upsample", "texture_anchor", "detector", "detection_threshold")
SPEC_KEYS = (*UPSCALE_KEYS, "detector", "detection_threshold")  # the PipelineSpec fields a preset fixes
_CHOICES = {"blend_variant": VARIANTS, "detector": DETECTORS, "texture_anchor": ANCHORS}
_SAFE_STR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


@dataclass(frozen=True)
class Settings:
    model: str
    face: str = "none"
    tile: int | str = 0
    denoise: float | None = None
    face_weight: float = 0.0
    blend: float = 0.0
    texture_target: float | None = None
    prefilter: float = 0.0
    texture_anchor: str = "lanczos"
    blend_variant: str = "global"
    face_upsample: bool = False
    tile_pad: int = 10
    pre_pad: int = 10
    overlap: int = 0
    outscale: float | None = None
    half: bool = False
    detector: str = "retinaface"
    detection_threshold: float = 0.9

    # ------------------------------------------------------------ to / from the pipeline's types
    # Every other field is a Params field or one of SPEC_KEYS, by name (tests/test_settings.py checks it)
    @classmethod
    def of(cls, spec: PipelineSpec, params: Params) -> Settings:
        return cls(model=spec.model.name, face=spec.face.name if spec.face else "none",
                   **{f.name: getattr(params, f.name) for f in fields(Params)},
                   **{k: getattr(spec, k) for k in SPEC_KEYS})

    @property
    def params(self) -> Params:
        return Params(**{f.name: getattr(self, f.name) for f in fields(Params)})

    def spec(self, base: PipelineSpec, models: Mapping[str, ModelSpec], faces: Mapping[str, ModelSpec]) -> PipelineSpec:
        """``base`` (device, memory limits, detector weights) with these settings' structure."""
        model = base.model if base.model.name == self.model else models[self.model]
        face = None if self.face == "none" else (base.face if base.face and base.face.name == self.face
                                                  else faces[self.face])
        partner = base.partner if model is base.model else models.get(model.denoise_partner or "")
        return replace(base, model=model, partner=partner, face=face, **{k: getattr(self, k) for k in SPEC_KEYS})

    # ------------------------------------------------------------ the one dict shape
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"model": self.model, "face": self.face, "params": {k: d[k] for k in PARAM_KEYS},
                "pipeline": {k: d[k] for k in PIPELINE_KEYS}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "settings") -> Settings:
        """Validate and build; raises :class:`PresetError` naming the problem."""
        from .weights import catalogue

        if not isinstance(data.get("model"), str) or not isinstance(data.get("face", "none"), str):
            raise PresetError(f"{where}: model and face must be names (see conf/model, conf/face)")
        models, faces = catalogue("model"), catalogue("face")
        if data["model"] not in models:
            raise PresetError(f"{where}: model {data['model']!r} is not in the catalogue ({sorted(models)})")
        face = data.get("face", "none")
        if face != "none" and face not in faces:
            raise PresetError(f"{where}: face {face!r} is not in the catalogue ({['none', *sorted(faces)]})")
        params, pipe = data.get("params") or {}, data.get("pipeline") or {}
        for name, node, keys in (("params", params, PARAM_KEYS), ("pipeline", pipe, PIPELINE_KEYS)):
            if not isinstance(node, Mapping) or set(node) - set(keys):
                raise PresetError(f"{where}: {name} must be a mapping of {list(keys)}, got {node!r}")
        types = {f.name: f.type for f in fields(cls)}
        for k, v in {**params, **pipe}.items():
            _check(k, v, types[k], where)
        try:
            Params.from_mapping(params)
        except Exception as e:
            raise PresetError(f"{where}: bad params: {e}") from e
        return cls(model=data["model"], face=face, **params, **pipe)

    def overrides(self) -> list[str]:
        """Hydra overrides that turn a composed config into these settings."""
        out = [f"model={self.model}", f"face={self.face}"]
        out += [f"params.{k}={_hydra(getattr(self, k))}" for k in (*PARAM_KEYS, "blend_variant", "face_upsample", "texture_anchor")]
        out += [f"upscale.{k}={_hydra(getattr(self, k))}" for k in UPSCALE_KEYS]
        out += [f"detection.detector={self.detector}", f"detection.threshold={_hydra(self.detection_threshold)}"]
        return out


def _hydra(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _check(k: str, v: Any, annotation: Any, where: str) -> None:
    """One value against its field: type, range, and no string Hydra would interpret."""
    if k == "tile":
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            return
        raise PresetError(f"{where}: params.tile must be an integer >= 0 or 'auto', got {v!r}")
    ann = str(annotation)
    if "bool" in ann:
        if not isinstance(v, bool):
            raise PresetError(f"{where}: {k} must be true or false, got {v!r}")
        return
    if "str" in ann:
        if not isinstance(v, str) or not _SAFE_STR.fullmatch(v) or v not in _CHOICES.get(k, (v,)):
            raise PresetError(f"{where}: {k}={v!r} is not one of {_CHOICES.get(k)}")
        return
    if v is None and "None" in ann:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise PresetError(f"{where}: {k} must be a finite number{' or null' if 'None' in ann else ''}, got {v!r}")
    if "int" in ann and "float" not in ann and (not isinstance(v, int) or v < 0):
        raise PresetError(f"{where}: {k} must be an integer >= 0, got {v!r}")
    if k == "outscale" and not 0 < v <= 16:
        raise PresetError(f"{where}: outscale must be a finite scale in (0, 16] or null, got {v}")
    if k == "detection_threshold" and not 0 < v <= 1:
        raise PresetError(f"{where}: detection_threshold must be in (0, 1], got {v}")
