"""Config read once at the edge: composed Hydra nodes -> typed, validated values.

Nothing below this module reads a DictConfig.  Every check here runs before any model
loads, and every failure is a :class:`ConfigError` that names the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from . import archs
from .cache import StageCache
from .dataset import Dataset
from .errors import ConfigError, check_keys, flag
from .faces import DETECTORS
from .images import Limits
from .memory import default_memory_budget
from .pipeline import Params, PipelineSpec, dni_plan
from .settings import UPSCALE_KEYS
from .spec import DEFAULT_MAX_OUTPUT_PIXELS, MemoryLimits
from .storage import StudySettings, check_study_name
from .texture import GAP_SCALE
from .upscale import arch_scale
from .weights import ModelSpec, WeightStore, catalogue, load_state_dict

if TYPE_CHECKING:
    from .compare import Rules, Side
    from .study import TuneJob

OUTPUT_FORMATS = ("same", "png", "jpg", "webp", "tif", "bmp")


def to_dict(node: Any) -> Any:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


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
    return WeightStore(weights_dir=wd, cache_dir=cache, allow_download=flag(cfg, "allow_download", True))


def stage_cache(cfg: Any) -> StageCache | None:
    c = to_dict(cfg.get("cache")) or {}
    check_keys(c, {"enabled", "dir", "max_gb"}, "cache")
    if not flag(c, "enabled", True, "cache."):
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


# options that moved: the pipeline's options left conf/face (the catalogue) and the root
MOVED = {"blend_variant": "params.blend_variant", "face.upsample": "params.face_upsample",
         "face.detector": "detection.detector", "face.detection_threshold": "detection.threshold"}


def face_spec(node: Mapping[str, Any] | None) -> ModelSpec | None:
    """A face model from the catalogue (conf/face): facts about the network, no options."""
    moved = [f"{k} is now {v}" for k, v in MOVED.items() if node and k.startswith("face.") and k[5:] in node]
    if moved:
        raise ConfigError("; ".join(moved))
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
    if cfg.get("blend_variant") is not None:
        raise ConfigError(f"blend_variant is now {MOVED['blend_variant']}")
    store = weight_store(cfg)
    model = model_spec(to_dict(cfg.model))
    face_node = to_dict(cfg.get("face")) or {}
    face = face_spec(face_node)
    up = to_dict(cfg.get("upscale")) or {}
    check_keys(up, set(UPSCALE_KEYS), "upscale")
    partner = None
    if model.denoise_partner:
        partner = catalogue("model").get(model.denoise_partner)
    params = Params.from_mapping(to_dict(cfg.params))
    detector, threshold = detection(cfg)
    dni_plan(model, partner, params.denoise)  # validates denoise against the model
    spec = PipelineSpec(
        model=model, face=face, partner=partner,
        tile_pad=int(up.get("tile_pad", 10)), pre_pad=int(up.get("pre_pad", 10)),
        overlap=int(up.get("overlap", 0)),
        outscale=None if up.get("outscale") is None else float(up["outscale"]),
        half=flag(up, "half", False, "upscale."),
        detector=detector,
        detector_model=catalogue("detector").get(detector),
        detection_threshold=threshold,
        device=resolve_device(str(cfg.get("device", "auto"))),
        memory=memory_limits(cfg),
    )
    if spec.tile_pad < 0 or spec.pre_pad < 0 or spec.overlap < 0:
        raise ConfigError("upscale.tile_pad, pre_pad and overlap must be >= 0")
    if isinstance(params.tile, int) and params.tile and spec.overlap * 2 >= params.tile:
        raise ConfigError(f"upscale.overlap={spec.overlap} must be less than half of params.tile={params.tile}")
    if params.texture_anchor == "predicted" and model.arch.get("type") != "auto" and (spec.outscale or model.scale) != GAP_SCALE:
        raise ConfigError(f"params.texture_anchor=predicted is fitted at x{GAP_SCALE}; this pipeline upscales "
                          f"x{spec.outscale or model.scale:g} (use params.texture_anchor=lanczos)")
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


def dataset_from_cfg(cfg: Any, *, split: str | None = None) -> Dataset:
    """The ``dataset`` node: the portrait set at its analysis size (pairs: ``split`` overrides theirs)."""
    from . import dataset

    d = to_dict(cfg.dataset) or {}
    check_keys(d, {"path", "max_side", "limit", "on_error", "pairs"}, "dataset")
    ms, pairs, p = d.get("max_side"), None, d.get("pairs")
    if p:
        check_keys(p, {"scale", "degradation", "seed", "split"}, "dataset.pairs")
        pairs = dataset.Pairs(scale=int(p.get("scale", 4)), degradation=p.get("degradation", "none"),
                              seed=int(p.get("seed", 0)), split=split or str(p.get("split", "all")))
    return dataset.load(d.get("path"), max_side=None if ms is None else int(ms), limit=d.get("limit"),
                        limits=limits(cfg), on_error=str(d.get("on_error", "skip")), pairs=pairs,
                        allow_empty=split is not None)


def detection(cfg: Any) -> tuple[str, float]:
    """The ``detection`` node: (detector, threshold)."""
    d = to_dict(cfg.get("detection")) or {}
    check_keys(d, {"detector", "threshold"}, "detection")
    name, threshold = str(d.get("detector", "retinaface")), float(d.get("threshold", 0.9))
    if name not in DETECTORS:
        raise ConfigError(f"detection.detector must be one of {DETECTORS}, got {name!r}")
    if not 0 < threshold <= 1:
        raise ConfigError(f"detection.threshold must be in (0, 1], got {threshold}")
    return name, threshold


def detector_from_cfg(cfg: Any) -> Any:
    """The face detector the config's ``detection`` node names."""
    from .faces import FaceDetector
    from .weights import catalogue

    name, threshold = detection(cfg)
    path = None
    if name == "retinaface_resnet50":
        spec = catalogue("detector").get(name)
        if spec is None:
            raise ConfigError("detection.detector=retinaface_resnet50 needs conf/detector/retinaface_resnet50.yaml")
        path = weight_store(cfg).resolve(spec)
    return FaceDetector(name, threshold=threshold, resnet50_path=path)


def redacted_yaml(cfg: Any) -> str:
    """The composed config as YAML, every URL's password replaced by *** (storage, tracking)."""
    import yaml

    from .storage import redact_url

    def walk(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return redact_url(v) if isinstance(v, str) else v

    return yaml.safe_dump(walk(to_dict(cfg)), sort_keys=False)


def study_settings(cfg: Any, run_dir: Path) -> StudySettings:
    s = to_dict(cfg.study) or {}
    check_keys(s, {"name", "n_trials", "storage", "sampler", "seed", "n_startup_trials", "pruner", "heartbeat",
                   "max_retry", "strict", "allow_infeasible", "max_consecutive_failures", "max_failures",
                   "score_threads", "storage_retry_s"}, "study")
    pr = s.get("pruner") or {}
    check_keys(pr, {"enabled", "p_threshold", "n_startup_steps"}, "study.pruner")
    hb = s.get("heartbeat") or {}
    check_keys(hb, {"interval", "grace_period"}, "study.heartbeat")
    sampler = str(s.get("sampler", "tpe"))
    if sampler not in ("tpe", "gp", "nsga2", "random", "grid"):
        raise ConfigError(f"study.sampler must be tpe, gp, nsga2, random or grid, got {sampler!r}")
    n = int(s.get("n_trials", 0))
    if n < 1:
        raise ConfigError(f"study.n_trials must be >= 1, got {n}")
    name = check_study_name(str(s.get("name") or ""))
    max_consec, max_fail = int(s.get("max_consecutive_failures", 3)), int(s.get("max_failures", 10))
    if max_consec < 1 or max_fail < 1:
        raise ConfigError("study.max_consecutive_failures and study.max_failures must be >= 1")
    storage = s.get("storage") or f"sqlite:///{(run_dir / 'study.db').resolve()}"
    threads = s.get("score_threads", "auto")
    if threads == "auto":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = min(cpus, 4)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"study.score_threads must be an integer >= 1 or auto, got {threads!r}")
    retry_s = float(s.get("storage_retry_s", 120))
    if not retry_s >= 0:
        raise ConfigError(f"study.storage_retry_s must be >= 0 seconds, got {retry_s}")
    return StudySettings(name=name, n_trials=n, storage=str(storage), sampler=sampler, seed=int(s.get("seed", 0)),
                         n_startup_trials=int(s.get("n_startup_trials", 8)), pruner=flag(pr, "enabled", True, "study.pruner."),
                         p_threshold=float(pr.get("p_threshold", 0.1)), n_startup_steps=int(pr.get("n_startup_steps", 5)),
                         heartbeat_interval=int(hb.get("interval", 30)), grace_period=int(hb.get("grace_period", 90)),
                         max_retry=int(s.get("max_retry", 2)), strict=flag(s, "strict", False, "study."),
                         allow_infeasible=flag(s, "allow_infeasible", False, "study."),
                         max_consecutive_failures=max_consec, max_failures=max_fail, score_threads=threads,
                         storage_retry_s=retry_s)


def tune_job(cfg: Any, run_dir: Path) -> TuneJob:
    """The `tuner tune` config, validated before any model loads."""
    from . import objective as O
    from .search import search_space
    from .study import TuneJob

    st = study_settings(cfg, run_dir)
    pc = pipeline_config(cfg)
    space = search_space(to_dict(cfg.search) or {})
    objective_node = to_dict(cfg.objective) or {}
    objective = O.from_mapping(objective_node)
    names, iqa_side = metric_settings(cfg)
    tracking = to_dict(cfg.tracking) or {}
    check_keys(tracking, {"enabled", "uri", "experiment", "contact_sheet_faces"}, "tracking")
    data = dataset_from_cfg(cfg)  # tuned on LR/HR pairs' train split: the val split is scored after the study
    held_out = dataset_from_cfg(cfg, split="val") if data.pairs and data.pairs.split == "train" else None
    return TuneJob(study=st, spec=pc.spec, params=pc.params, space=space, objective=objective,
                   objective_node=objective_node, metric_names=names, iqa_max_side=iqa_side,
                   dataset=data, validation=held_out, store=pc.store, cache=pc.cache, run_dir=run_dir,
                   tracking_enabled=flag(tracking, "enabled", True, "tracking."),
                   tracking_uri=str(os.environ.get("MLFLOW_TRACKING_URI") or tracking.get("uri") or ""),
                   experiment=str(tracking.get("experiment") or "tuner"),
                   contact_sheet_faces=int(tracking.get("contact_sheet_faces", 6)))


def study_run_dir(cfg: Any) -> Path:
    """A study's run folder, as `tuner tune` makes it (paths.runs_dir/<study.name>, no ~ expansion)."""
    return Path(str(cfg.paths.runs_dir)) / str((to_dict(cfg.study) or {}).get("name"))


@dataclass(frozen=True)
class CompareJob:
    baseline: Side
    candidate: Side
    rules: Rules
    dataset: Dataset
    metric_names: list[str]
    iqa_max_side: int
    store: WeightStore
    cache: StageCache | None
    out: Path
    report: bool


def compare_job(cfg: Any) -> CompareJob:
    """`tuner compare`: both sides, the rules, the dataset; validated before any model loads."""
    from .compare import Rules

    pc = pipeline_config(cfg)
    baseline = compare_side(to_dict(cfg.baseline), "baseline", pc, None)
    candidate = compare_side(to_dict(cfg.candidate), "candidate", pc, baseline)
    names, iqa_side = metric_settings(cfg)
    return CompareJob(baseline=baseline, candidate=candidate, rules=Rules.from_mapping(to_dict(cfg.compare) or {}),
                      dataset=dataset_from_cfg(cfg), metric_names=names, iqa_max_side=iqa_side, store=pc.store,
                      cache=pc.cache, out=Path(str(cfg.out)), report=flag(cfg, "report", True))


def compare_side(value: Any, label: str, pc: PipelineConfig, baseline: Side | None) -> Side:
    """A side from ``baseline=``/``candidate=``: a preset YAML, a catalogue model name, or
    (candidate only) a ``.pth`` of the baseline's architecture, given as a path or as
    ``candidate.model.path``."""
    from . import preset as presets
    from .compare import Side

    models, faces = catalogue("model"), catalogue("face")
    if isinstance(value, Mapping):
        check_keys(value, {"preset", "model"}, label)
        path = (value.get("model") or {}).get("path")
        if value.get("preset") and path:
            raise ConfigError(f"{label}: give preset or model.path, not both")
        value = value.get("preset") or path
    if not value:
        raise ConfigError(f"{label}= is required: a preset YAML, a model name ({sorted(models)}) or a .pth")
    value = str(value)
    if value.endswith((".yaml", ".yml")):
        st = presets.settings_of(presets.load(value))
        return Side(label, f"preset {value}", st.spec(pc.spec, models, faces), st.params)
    if value in models:
        m = pc.spec.model if value == pc.spec.model.name else models[value]  # the config's model node, as overridden
        return Side(label, f"model {value}", replace(pc.spec, model=m, partner=models.get(m.denoise_partner or "")),
                    replace(pc.params, denoise=pc.params.denoise if m.denoise_partner else None))
    if value.endswith((".pth", ".pt", ".safetensors")):
        if baseline is None:
            raise ConfigError(f"{label}={value}: a weights file is compared against a baseline of its family; "
                              "give the baseline as a preset or a model name")
        spec = model_spec({"name": Path(value).stem, "path": value, "arch": {"type": "auto"}})
        want = baseline.spec.model
        kind, want_kind = (spec.arch.get("type"), arch_scale(spec.arch)), (want.arch.get("type"), arch_scale(want.arch))
        if kind != want_kind:
            raise ConfigError(f"{label}: {value} is a {kind[0]} x{kind[1]}, not the baseline's {want_kind[0]} "
                              f"x{want_kind[1]} ({want.name})")
        return Side(label, f"weights {value} (the baseline's settings)", replace(baseline.spec, model=spec, partner=None),
                    replace(baseline.params, denoise=None))
    raise ConfigError(f"{label}={value!r} is not a preset (.yaml), a model name ({sorted(models)}) or a weights file "
                      "(.pth)")
