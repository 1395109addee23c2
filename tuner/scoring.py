"""Scoring: from a pipeline output to metric values, per image and over a set.

Used by ``tuner evaluate``, by the study's trials and by the coming ``compare``; it knows
nothing of Optuna.  The input side (the classic upscale R, skin masks, faces, the input's
face embeddings) is analysed once per input and output size and reused; an output already
scored is never scored again (memo, and the stage cache's ``metrics`` entries, keyed on
everything a value depends on).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from . import PIPELINE_VERSION
from . import metrics as M
from .cache import StageCache
from .dataset import Dataset, Item
from .errors import ConfigError, ImageError, PipelineError, TunerError
from .files import atomic_write_bytes, list_images
from .hashing import array_hash, make_key
from .images import Limits, decode, encode
from .metrics.version import METRICS_VERSION, code_digest

log = logging.getLogger("tuner")

Failures = list[tuple[Path, str]]  # (file, why) of every input or output that could not be scored


def summarize(df: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    rows = []
    for n in names:
        v = pd.to_numeric(df[n], errors="coerce").dropna() if n in df else pd.Series(dtype=float)
        rows.append({"metric": n, "direction": M.get(n).direction, "n": int(v.size),
                     "mean": v.mean() if v.size else math.nan, "median": v.median() if v.size else math.nan,
                     "p10": v.quantile(0.1) if v.size else math.nan, "p90": v.quantile(0.9) if v.size else math.nan})
    return pd.DataFrame(rows)


def score_one(output: np.ndarray, analysis: M.InputAnalysis, names: list[str], *, tile: int,
              face_mask: np.ndarray | None, iqa_max_side: int) -> tuple[dict[str, float], dict[str, Any]]:
    ctx = M.Context(output, analysis, tile=tile, face_mask=face_mask, iqa_max_side=iqa_max_side)
    vals = M.score(ctx, names)
    extra = {"notes": "; ".join(f"{k}: {v}" for k, v in ctx.notes.items())}
    if "identity_per_face" in ctx.extras:
        extra["identity_per_face"] = json.dumps([round(x, 4) for x in ctx.extras["identity_per_face"]])
    return vals, extra


def truth_at(item: Item, out_hw: tuple[int, int]) -> np.ndarray | None:
    """The item's ground truth at the output size (None without one): a smaller output than the
    pairs' is compared with the truth downscaled to it (INTER_AREA); a larger one has none."""
    hr = item.hr
    if hr is None or hr.shape[:2] == tuple(out_hw):
        return hr
    if out_hw[0] > hr.shape[0] or out_hw[1] > hr.shape[1]:
        return None  # an output larger than the truth: no truth at that size (an upscaled HR is none)
    return np.clip(cv2.resize(hr, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_AREA), 0, 1).astype(np.float32)


def analysis_for(item: Item, res: Any, pipe: Any) -> M.InputAnalysis:
    """The input analysis for a pipeline result (faces from the pipeline's own detector cache)."""
    faces = res.faces if res.faces else pipe.detect(item.image)
    out_hw = res.image.rgb.shape[:2]
    a = M.InputAnalysis(item.image.rgb, faces, out_hw, hr=truth_at(item, out_hw))
    a.__dict__["reference"] = res.reference  # reuse R instead of recomputing it
    return a


def metric_key(output: np.ndarray, analysis: M.InputAnalysis, names: list[str], *, tile: int,
               face_mask: np.ndarray | None, iqa_max_side: int, detector: str, detection_threshold: float) -> str:
    """Everything a metric value depends on: the output, the input, the faces the skin and
    identity metrics read (and the detector settings that found them), the tile grid, the
    paste mask, the analysis size, and the metric code itself (version + source digest)."""
    faces = [[*map(float, f.box), *map(float, np.asarray(f.landmarks).ravel()), float(f.score)]
             for f in analysis.faces]
    if "input_hash" not in analysis.memo:  # the input (and its truth) never change between trials: hash once
        analysis.memo["input_hash"] = array_hash(analysis.input)
        analysis.memo["hr_hash"] = "none" if analysis.hr is None else array_hash(analysis.hr)
    return make_key(out=array_hash(output), input=analysis.memo["input_hash"], hr=analysis.memo["hr_hash"], faces=faces,
                    detector=detector, threshold=detection_threshold, names=names, tile=tile,
                    mask="none" if face_mask is None else array_hash(face_mask), iqa=iqa_max_side,
                    pipeline=PIPELINE_VERSION, metrics=METRICS_VERSION, code=code_digest(names))


class Scorer:
    """Scores pipeline results of one dataset with a fixed metric set, reusing what it can."""

    def __init__(self, names: list[str], *, iqa_max_side: int, detector: str, detection_threshold: float,
                 cache: StageCache | None) -> None:
        self.names = names
        self.iqa_max_side = iqa_max_side
        self.detector = detector
        self.detection_threshold = detection_threshold
        self.cache = cache
        self._analyses: dict[tuple[str, tuple[int, int]], M.InputAnalysis] = {}
        self._memo: dict[str, dict[str, float]] = {}

    def analysis(self, item: Item, res: Any, pipe: Any) -> M.InputAnalysis:
        """The input's analysis, computed once per (input, output size) and reused by every trial."""
        key = (item.content_hash, res.image.rgb.shape[:2])
        if key not in self._analyses:
            self._analyses[key] = analysis_for(item, res, pipe)
        if not res.faces:
            res.faces = self._analyses[key].faces  # for the contact sheet
        return self._analyses[key]

    def score(self, res: Any, analysis: M.InputAnalysis) -> tuple[dict[str, float], dict[str, Any]]:
        """Metric values of one output; never recomputed for an output already scored."""
        names = self.names
        key = metric_key(res.image.rgb, analysis, names, tile=res.tile, face_mask=res.face_mask,
                         iqa_max_side=self.iqa_max_side, detector=self.detector,
                         detection_threshold=self.detection_threshold)
        if key in self._memo:
            return self._memo[key], {"memo": True}
        if self.cache is not None:
            hit = self.cache.get("metrics", key)
            if hit is not None:
                vals = dict(zip(names, hit["values"].tolist(), strict=True))
                self._memo[key] = vals
                return vals, {"memo": True}
        vals, extra = score_one(res.image.rgb, analysis, names, tile=res.tile, face_mask=res.face_mask,
                                iqa_max_side=self.iqa_max_side)
        self._memo[key] = vals
        if self.cache is not None:
            self.cache.put("metrics", key, {"values": np.array([vals[n] for n in names], dtype=np.float64)})
        return vals, extra


# ---------------------------------------------------------------- scoring a set (tuner evaluate)
def _skip(failures: Failures, f: Path, why: str) -> None:
    failures.append((f, why))
    log.error("skipped: %s", why)


def input_failed(failures: Failures, f: Path, e: Exception, *, max_side: str = "dataset.max_side") -> None:
    """Record that input ``f`` failed with ``e``, so the other inputs go on (enhance's and evaluate's
    per-input rule): a bad image or a refused input by its message, an allocation refused outright by
    what to lower (``max_side``: the setting that downscales inputs), a bug (any exception but a
    :class:`TunerError`) by its type, with its traceback at debug.  Any other :class:`TunerError`
    (configuration, weights, metrics, an output that cannot be written: the same for every input)
    is re-raised and stops the run."""
    if isinstance(e, (ImageError, PipelineError)):
        _skip(failures, f, str(e))
        return
    if isinstance(e, MemoryError):  # an allocation refused outright (no kernel kill): this input only
        _skip(failures, f, f"{f}: ran out of memory ({e or 'MemoryError'}); use params.tile=auto, lower "
                           f"limits.max_memory_gb or downscale the input ({max_side}=...)")
        return
    if isinstance(e, TunerError):
        raise e
    log.debug("%s: traceback", f, exc_info=e)
    _skip(failures, f, f"{f}: unexpected {type(e).__name__}: {e} (its traceback: hydra.verbose=tuner)")


def write_output(image: Any, dest: Path, setting: str) -> Path:
    """Encode ``image`` to ``dest``; a write that fails (a full or unwritable folder: every input's
    problem, not this one's) is a :class:`ConfigError` naming ``setting``, which stops the run."""
    try:
        return encode(image, dest)
    except OSError as e:
        raise ConfigError(f"cannot write {dest}: {e}; check that {setting}={dest.parent} is writable and has room") \
            from e


def score_pipeline(ds: Dataset, pipe: Any, params: Any, names: list[str], *, iqa_max_side: int,
                   save_dir: Path | None = None) -> tuple[list[dict[str, Any]], Failures]:
    """Run the pipeline on every image of ``ds`` and score it (optionally writing the outputs)."""
    from tqdm import tqdm

    rows, failures = [], list(ds.failures)
    for it in tqdm(ds.items, desc="evaluate", unit="img"):
        try:
            res = pipe.run(it.image, params)
            if save_dir is not None:
                write_output(res.image, save_dir / f"{it.name}.png", "out")
            vals, extra = score_one(res.image.rgb, analysis_for(it, res, pipe), names, tile=res.tile,
                                    face_mask=res.face_mask, iqa_max_side=iqa_max_side)
        except Exception as e:
            input_failed(failures, it.path, e)
            continue
        rows.append({"image": it.name, **vals, **extra})
    return rows, failures


def score_outputs(ds: Dataset, outputs: Path, names: list[str], *, detector: Any, tile: int, iqa_max_side: int,
                  limits: Limits) -> tuple[list[dict[str, Any]], Failures]:
    """Score existing outputs, matched to the inputs of ``ds`` by file stem."""
    from tqdm import tqdm

    by_stem = {p.stem: p for p in list_images(outputs)}
    rows, failures = [], list(ds.failures)
    for it in tqdm(ds.items, desc="evaluate", unit="img"):
        if it.name not in by_stem:
            _skip(failures, it.path, f"no output named {it.name}.* in {outputs}")
            continue
        out_file = by_stem[it.name]
        try:
            o = decode(out_file, limits=limits).rgb
            ih, iw = it.image.size
            if abs((o.shape[0] / ih) / (o.shape[1] / iw) - 1) > 0.02:
                raise ImageError(f"{out_file}: {o.shape[1]}x{o.shape[0]} is not an upscale of {it.path.name} "
                                 f"({iw}x{ih} after dataset.max_side={ds.max_side}); with outputs= use "
                                 "dataset.max_side=null")
            analysis = M.InputAnalysis(it.image.rgb, detector(it.image.rgb), o.shape[:2], hr=truth_at(it, o.shape[:2]))
            vals, extra = score_one(o, analysis, names, tile=tile, face_mask=None, iqa_max_side=iqa_max_side)
        except Exception as e:
            input_failed(failures, out_file, e)
            continue
        rows.append({"image": it.name, **vals, **extra})
    return rows, failures


def score_folder(folder: Path, names: list[str], *, iqa_max_side: int,
                 limits: Limits) -> tuple[list[dict[str, Any]], Failures]:
    """NR-only: score every image in ``folder`` with the metrics that need no input; the others are
    NaN with the note "needs input"."""
    from tqdm import tqdm

    nr = [n for n in names if not M.get(n).needs]
    if not nr:
        raise ConfigError(f"outputs= without dataset.path scores no-reference metrics only, and none of {names} is "
                          "one (niqe, brisque, piqe, ...); give dataset.path=INPUTS to score against the inputs")
    log.info("no dataset.path: NR-only scoring of %s with %s (give dataset.path=INPUTS for the other metrics)",
             folder, nr)
    rows: list[dict[str, Any]] = []
    failures: Failures = []
    for f in tqdm(list_images(folder), desc="evaluate", unit="img"):
        try:
            o = decode(f, limits=limits).rgb
            # NR metrics read only the output: an analysis of the output itself stands in for the input
            ctx = M.Context(o, M.InputAnalysis(o, [], o.shape[:2]), iqa_max_side=iqa_max_side)
            vals = {n: (M.score(ctx, [n])[n] if n in nr else math.nan) for n in names}
        except Exception as e:
            input_failed(failures, f, e)
            continue
        notes = {**ctx.notes, **{n: "needs input" for n in names if n not in nr}}
        rows.append({"image": f.stem, **vals, "notes": "; ".join(f"{k}: {v}" for k, v in notes.items())})
    return rows, failures


def write_tables(rows: Sequence[dict[str, Any]], names: list[str], out: Path) -> pd.DataFrame:
    """Write ``metrics.csv`` (a row per image) and ``summary.csv`` (per metric) atomically; returns the summary."""
    if not rows:
        raise ConfigError("no image could be scored; see the errors above")
    df = pd.DataFrame(list(rows))
    atomic_write_bytes(out / "metrics.csv", df.to_csv(index=False).encode())
    summary = summarize(df, names)
    atomic_write_bytes(out / "summary.csv", summary.to_csv(index=False).encode())
    return summary
