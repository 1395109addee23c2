"""Scoring: from a pipeline output to metric values, per image and over a set.

Used by ``tuner evaluate``, by the study's trials and by the coming ``compare``; it knows
nothing of Optuna.  The input side (the classic upscale R, skin masks, faces, the input's
face embeddings) is analysed once per input and output size and reused; an output already
scored is never scored again (memo, and the stage cache's ``metrics`` entries, keyed on
everything a value depends on).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from . import PIPELINE_VERSION
from . import metrics as M
from .cache import StageCache
from .dataset import Item
from .hashing import array_hash, make_key
from .metrics.version import METRICS_VERSION, code_digest


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


def analysis_for(item: Item, res: Any, pipe: Any) -> M.InputAnalysis:
    """The input analysis for a pipeline result (faces from the pipeline's own detector cache)."""
    faces = res.faces if res.faces else pipe.detect(item.image)
    a = M.InputAnalysis(item.image.rgb, faces, res.image.rgb.shape[:2])
    a.__dict__["reference"] = res.reference  # reuse R instead of recomputing it
    return a


def metric_key(output: np.ndarray, analysis: M.InputAnalysis, names: list[str], *, tile: int,
               face_mask: np.ndarray | None, iqa_max_side: int, detector: str, detection_threshold: float) -> str:
    """Everything a metric value depends on: the output, the input, the faces the skin and
    identity metrics read (and the detector settings that found them), the tile grid, the
    paste mask, the analysis size, and the metric code itself (version + source digest)."""
    faces = [[*map(float, f.box), *map(float, np.asarray(f.landmarks).ravel()), float(f.score)]
             for f in analysis.faces]
    return make_key(out=array_hash(output), input=array_hash(analysis.input), faces=faces,
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
