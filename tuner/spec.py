"""The pipeline's settings types, below both the pipeline and its memory planning.

- :class:`PipelineSpec`: everything structural about a pipeline (models, pipeline options,
  device, memory limits);
- :class:`Params`: what a trial or a call sets: the four tuned knobs and the two options a
  study may search with them (``blend_variant``, ``face_upsample``);
- :class:`MemoryLimits`: the output-size and memory guards checked before any work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .blend import VARIANTS
from .errors import ConfigError
from .texture import ANCHORS
from .weights import ModelSpec

TILE_AUTO = "auto"
# Refuse outputs above this many pixels (2^27, about 11585^2: a 2896^2 input at x4).  The part
# of the work no tile can shrink (the SR output, R, the face paste, the blend and the encode) was
# measured at 72 (global blend, no faces) to 113 (frequency blend with a face paste) bytes per
# output pixel, ~16 more with alpha: 2^27 pixels need 10-17 GB, inside 80 % of a 24 GB machine.
# A 4096^2 output (16.8 M pixels, ~1.2-2 GB) passes; a 24000^2 one (576 M pixels, 41-75 GB) is refused.
DEFAULT_MAX_OUTPUT_PIXELS = 2**27


@dataclass(frozen=True)
class MemoryLimits:
    """Guards checked before any work on an input (:func:`make_plan`).

    - ``max_output_pixels``: outputs larger than this are refused (:class:`PipelineError`);
    - ``max_memory_bytes``: budget for one input's working set beyond the loaded models; an
      input whose estimated peak exceeds it at its tile is refused (:class:`PipelineError`), and
      ``params.tile=auto`` picks the largest tile that fits.  None = :func:`default_memory_budget`.
    """

    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    max_memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_output_pixels < 1:
            raise ConfigError(f"limits.max_output_pixels must be >= 1, got {self.max_output_pixels}")
        if self.max_memory_bytes is not None and self.max_memory_bytes < 1:
            raise ConfigError(f"limits.max_memory_gb must be > 0 or auto, got {self.max_memory_bytes / 2**30:g}")


@dataclass(frozen=True)
class Params:
    """The tuned knobs, set per call: one :class:`Pipeline` (and its memos) serves every trial.

    - ``tile``: Real-ESRGAN tile size in input px (0 = whole image), or ``"auto"``: the largest
      of :data:`tuner.memory.TILE_LADDER` whose estimated peak memory fits ``limits.max_memory_gb`` (the
      tile chosen is in :attr:`Result.tile`); memory/speed/seams only;
    - ``denoise``: DNI weight in [0, 1] with the model's partner (None = the model as is);
    - ``face_weight``: [0, 1] alpha of restored faces over the upscaled faces;
    - ``blend``: [0, 1] share of a Lanczos upscale mixed into the result;
    - ``blend_variant``: how the blend mixes (:data:`VARIANTS`, see :mod:`tuner.blend`);
    - ``face_upsample``: restore faces from an SR-upscaled crop (GFPGAN's ``--upscale`` path)
      instead of the input crop;
    - ``prefilter``: [0, 1] strength of a classical denoise (non-local means) of the input
      before the network and the face restorer (:func:`tuner.images.prefilter`); 0 = off;
    - ``texture_target``: the texture policy (:mod:`tuner.texture`): put the skin's texture this
      many octaves above a Lanczos upscale's, per image (R mixed in where crunchier, seeded
      band-limited grain where waxier); None = off;
    - ``texture_anchor``: what ``texture_target`` counts from (:data:`tuner.texture.ANCHORS`):
      ``lanczos`` = a Lanczos upscale's texture, the same for every image; ``predicted`` = the
      texture a real photograph would have, predicted per image from the input
      (:func:`tuner.texture.predicted_gap`), so 0 aims at the truth itself.
    """

    tile: int | str = 0
    denoise: float | None = None
    face_weight: float = 0.0
    blend: float = 0.0
    blend_variant: str = "global"
    face_upsample: bool = False
    texture_target: float | None = None
    texture_anchor: str = "lanczos"
    prefilter: float = 0.0

    def __post_init__(self) -> None:
        if self.tile != TILE_AUTO and (not isinstance(self.tile, int) or isinstance(self.tile, bool) or self.tile < 0):
            raise ConfigError(f"params.tile must be an integer >= 0 or 'auto', got {self.tile!r}")
        if self.denoise is not None and not 0.0 <= float(self.denoise) <= 1.0:
            raise ConfigError(f"params.denoise must be in [0, 1] or null, got {self.denoise}")
        for k in ("face_weight", "blend", "prefilter"):
            v = getattr(self, k)
            if not 0.0 <= float(v) <= 1.0:
                raise ConfigError(f"params.{k} must be in [0, 1], got {v}")
        if self.blend_variant not in VARIANTS:
            raise ConfigError(f"params.blend_variant must be one of {VARIANTS}, got {self.blend_variant!r}")
        if self.texture_target is not None and not -3.0 <= float(self.texture_target) <= 8.0:
            raise ConfigError(f"params.texture_target must be in [-3, 8] octaves or null, got {self.texture_target}")
        if self.texture_anchor not in ANCHORS:
            raise ConfigError(f"params.texture_anchor must be one of {ANCHORS}, got {self.texture_anchor!r}")
        if not isinstance(self.face_upsample, bool):
            raise ConfigError(f"params.face_upsample must be true or false, got {self.face_upsample!r}")

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> Params:
        """A config's ``params`` node."""
        unknown = set(m) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown params {sorted(unknown)}; they are {[f.name for f in fields(cls)]}")
        den = m.get("denoise")
        return cls(tile=_tile(m.get("tile", 0)), denoise=None if den is None else float(den),
                   face_weight=float(m.get("face_weight", 0.0) or 0.0), blend=float(m.get("blend", 0.0) or 0.0),
                   blend_variant=str(m.get("blend_variant", "global")), face_upsample=m.get("face_upsample", False),
                   texture_target=None if m.get("texture_target") is None else float(m["texture_target"]),
                   texture_anchor=str(m.get("texture_anchor", "lanczos")),
                   prefilter=float(m.get("prefilter", 0.0) or 0.0))


def _tile(v: Any) -> int | str:
    if isinstance(v, str) and v.strip().lower() == TILE_AUTO:
        return TILE_AUTO
    try:
        return int(v or 0)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"params.tile must be an integer >= 0 or 'auto', got {v!r}") from e


@dataclass(frozen=True)
class PipelineSpec:
    """Everything structural about a pipeline: models, stage options, device, limits (fixed
    within a study; what a trial changes is in :class:`Params`)."""

    model: ModelSpec
    face: ModelSpec | None = None
    partner: ModelSpec | None = None  # DNI partner of ``model``
    tile_pad: int = 10
    pre_pad: int = 10
    overlap: int = 0
    outscale: float | None = None
    half: bool = False
    detector: str = "retinaface"
    detector_model: ModelSpec | None = None  # weights of facexlib's detector when detector=retinaface_resnet50
    detection_threshold: float = 0.9
    device: str = "cpu"
    memory: MemoryLimits = MemoryLimits()  # output/memory guards and the params.tile=auto budget
