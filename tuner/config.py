"""Config read once at the edge: composed Hydra nodes -> typed, validated values.

Nothing below this module reads a DictConfig.  Every check here runs before any model
loads, and every failure is a :class:`ConfigError` that names the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from . import archs
from .blend import VARIANTS
from .cache import StageCache
from .dataset import Dataset
from .errors import ConfigError
from .faces import DETECTORS
from .images import Limits
from .memory import default_memory_budget
from .pipeline import Params, PipelineSpec, dni_plan
from .settings import UPSCALE_KEYS
from .spec import DEFAULT_MAX_OUTPUT_PIXELS, MemoryLimits
from .weights import ModelSpec, WeightStore, catalogue, load_state_dict

OUTPUT_FORMATS = ("same", "png", "jpg", "webp", "tif", "bmp")


def to_dict(node: Any) -> Any:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def check_keys(node: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(node) - allowed
    if unknown:
        import difflib

        hints = {k: difflib.get_close_matches(k, allowed, n=1) for k in unknown}
        hint = "; ".join(f"'{k}'" + (f" (did you mean '{v[0]}'?)" if v else "") for k, v in hints.items())
        raise ConfigError(f"unknown key(s) in {where}: {hint}. Allowed: {sorted(allowed)}")


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu or device=auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return name


def weight_store(cfg: Any) -> WeightStore:
    wd = cfg.get("weights_dir")
    if wd and not Path(str(wd)).expanduser().is_dir():
        raise ConfigError(f"weights_dir={wd} is not a folder")
    paths = cfg.get("paths")
    cache = Path(str(paths.cache_dir)).expanduser() / "weights" if paths is not None and paths.get("cache_dir") else None
    return WeightStore(weights_dir=wd, cache_dir=cache, allow_download=bool(cfg.get("allow_download", True)))


def stage_cache(cfg: Any) -> StageCache | None:
    c = to_dict(cfg.get("cache")) or {}
    check_keys(c, {"enabled", "dir", "max_gb"}, "cache")
    if not c.get("enabled", True):
        return None
    max_gb = float(c.get("max_gb", 20))
    if max_gb <= 0:
        raise ConfigError(f"cache.max_gb must be > 0, got {max_gb}")
    return StageCache(Path(str(c["dir"])).expanduser(), max_bytes=int(max_gb * 2**30))


INPUT_LIMITS = ("min_side", "max_side", "max_pixels")
MEMORY_LIMITS = ("max_output_pixels", "max_memory_gb")


def limits(cfg: Any) -> Limits:
    """The input limits (decode); the output/memory ones are :func:`memory_limits`."""
    m = to_dict(cfg.get("limits")) or {}
    check_keys(m, {*INPUT_LIMITS, *MEMORY_LIMITS}, "limits")
    try:
        return Limits(**{k: int(v) for k, v in m.items() if k in INPUT_LIMITS})
    except Exception as e:  # Limits raises ImageError with the reason
        raise ConfigError(f"limits: {e}") from e


def memory_limits(cfg: Any) -> MemoryLimits:
    """``limits.max_output_pixels`` and ``limits.max_memory_gb`` (a number, or auto = 80 % of the
    memory available now, resolved here once so every input of a run gets the same budget)."""
    m = to_dict(cfg.get("limits")) or {}
    check_keys(m, {*INPUT_LIMITS, *MEMORY_LIMITS}, "limits")
    mop = m.get("max_output_pixels", DEFAULT_MAX_OUTPUT_PIXELS)
    gb = m.get("max_memory_gb", "auto")
    try:
        max_output = int(mop)
        if gb is None or (isinstance(gb, str) and gb.strip().lower() == "auto"):
            budget = default_memory_budget()
        else:
            budget = int(float(gb) * 2**30)
            if budget <= 0:
                raise ValueError("must be > 0")
    except (TypeError, ValueError) as e:
        raise ConfigError(f"limits: max_output_pixels must be an integer >= 1 and max_memory_gb a number > 0 or "
                          f"auto, got {mop!r} and {gb!r} ({e})") from e
    return MemoryLimits(max_output_pixels=max_output, max_memory_bytes=budget)


def model_spec(node: Mapping[str, Any]) -> ModelSpec:
    """The SR model's spec; ``arch.type: auto`` (a bare .pth) is detected from the state dict."""
    m = dict(node)
    if m.get("path") == "???" or (m.get("arch") or {}).get("type") == "auto":
        if not m.get("path") or m.get("path") == "???":
            raise ConfigError("model=custom needs model.path=/path/to/weights.pth")
        p = Path(str(m["path"])).expanduser()
        if not p.is_file():
            raise ConfigError(f"model.path={p} does not exist")
        arch = archs.detect(load_state_dict(p, m.get("key")))
        m["arch"] = arch
        m["scale"] = arch["scale"]
        if m.get("name") in (None, "custom"):
            m["name"] = p.stem
    spec = ModelSpec.from_mapping(m)
    archs.validate(spec.arch, kind="sr", where=f"model '{spec.name}'")
    return spec


def face_spec(node: Mapping[str, Any] | None) -> ModelSpec | None:
    if not node or node.get("name") in (None, "none"):
        return None
    spec = ModelSpec.from_mapping(node)
    archs.validate(spec.arch, kind="face", where=f"face '{spec.name}'")
    return spec


@dataclass(frozen=True)
class PipelineConfig:
    spec: PipelineSpec
    params: Params
    store: WeightStore
    cache: StageCache | None


def pipeline_config(cfg: Any) -> PipelineConfig:
    """Validate the model/face/params/upscale/blend nodes of a composed config."""
    store = weight_store(cfg)
    model = model_spec(to_dict(cfg.model))
    face_node = to_dict(cfg.get("face")) or {}
    face = face_spec(face_node)
    up = to_dict(cfg.get("upscale")) or {}
    check_keys(up, set(UPSCALE_KEYS), "upscale")
    variant = str(cfg.get("blend_variant", "global"))
    if variant not in VARIANTS:
        raise ConfigError(f"blend_variant must be one of {VARIANTS}, got {variant!r}")
    partner = None
    if model.denoise_partner:
        partner = catalogue("model").get(model.denoise_partner)
    params = Params.from_mapping(to_dict(cfg.params))
    dni_plan(model, partner, params.denoise)  # validates denoise against the model
    spec = PipelineSpec(
        model=model,
        face=face,
        partner=partner,
        tile_pad=int(up.get("tile_pad", 10)),
        pre_pad=int(up.get("pre_pad", 10)),
        overlap=int(up.get("overlap", 0)),
        outscale=None if up.get("outscale") is None else float(up["outscale"]),
        half=bool(up.get("half", False)),
        blend_variant=variant,
        face_upsample=bool(face_node.get("upsample", False)),
        detector=str(face_node.get("detector", "retinaface")),
        detector_model=catalogue("detector").get(str(face_node.get("detector", "retinaface"))),
        detection_threshold=float(face_node.get("detection_threshold", 0.9)),
        device=resolve_device(str(cfg.get("device", "auto"))),
        memory=memory_limits(cfg),
    )
    if spec.detector not in DETECTORS:
        raise ConfigError(f"face.detector must be one of {DETECTORS}, got {spec.detector!r}")
    if spec.tile_pad < 0 or spec.pre_pad < 0 or spec.overlap < 0:
        raise ConfigError("upscale.tile_pad, pre_pad and overlap must be >= 0")
    if isinstance(params.tile, int) and params.tile and spec.overlap * 2 >= params.tile:
        raise ConfigError(f"upscale.overlap={spec.overlap} must be less than half of params.tile={params.tile}")
    return PipelineConfig(spec=spec, params=params, store=store, cache=stage_cache(cfg))


def metric_settings(cfg: Any) -> tuple[list[str], int]:
    """``metrics.names`` (each checked against the metric table) and ``metrics.iqa_max_side``."""
    from . import metrics

    node = to_dict(cfg.metrics) or {}
    check_keys(node, {"names", "iqa_max_side"}, "metrics")
    names = list(node.get("names") or [])
    if not names:
        raise ConfigError("metrics.names is empty")
    for n in names:
        metrics.get(n)  # unknown names fail here, before any model loads
    return names, int(node.get("iqa_max_side", 1024))


def dataset_from_cfg(cfg: Any) -> Dataset:
    """The ``dataset`` node: the portrait set at its analysis size."""
    from . import dataset

    d = to_dict(cfg.dataset) or {}
    check_keys(d, {"path", "max_side", "limit", "on_error"}, "dataset")
    ms = d.get("max_side")
    return dataset.load(d.get("path"), max_side=None if ms is None else int(ms), limit=d.get("limit"),
                        limits=limits(cfg), on_error=str(d.get("on_error", "skip")))


def detector_from_cfg(cfg: Any) -> Any:
    """The face detector the config names (``face.detector``, ``face.detection_threshold``)."""
    from .faces import FaceDetector
    from .weights import catalogue

    face = to_dict(cfg.get("face")) or {}
    name = str(face.get("detector", "retinaface"))
    threshold = float(face.get("detection_threshold", 0.9))
    if not 0 < threshold <= 1:
        raise ConfigError(f"face.detection_threshold must be in (0, 1], got {threshold}")
    path = None
    if name == "retinaface_resnet50":
        spec = catalogue("detector").get(name)
        if spec is None:
            raise ConfigError("face.detector=retinaface_resnet50 needs conf/detector/retinaface_resnet50.yaml")
        path = weight_store(cfg).resolve(spec)
    return FaceDetector(name, threshold=threshold, resnet50_path=path)
