"""`tuner evaluate`: score every image of a set, from the pipeline or from existing outputs.

Writes ``metrics.csv`` (one row per image, one column per metric, plus ``notes`` saying
why a value is missing) and ``summary.csv`` (mean, median, p10, p90 per metric).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import metrics as M
from .config import limits, pipeline_config, to_dict
from .dataset import Dataset, Item
from .dataset import load as load_dataset
from .errors import ConfigError, ImageError, PipelineError
from .faces import FaceDetector
from .images import decode, encode, list_images

log = logging.getLogger("tuner")


def metric_settings(cfg: Any) -> tuple[list[str], int]:
    node = to_dict(cfg.metrics) or {}
    from .config import check_keys

    check_keys(node, {"names", "iqa_max_side"}, "metrics")
    names = list(node.get("names") or [])
    if not names:
        raise ConfigError("metrics.names is empty")
    for n in names:
        M.get(n)  # unknown names fail here, before any model loads
    return names, int(node.get("iqa_max_side", 1024))


def dataset_from_cfg(cfg: Any) -> Dataset:
    d = to_dict(cfg.dataset) or {}
    from .config import check_keys

    check_keys(d, {"path", "max_side", "limit", "on_error"}, "dataset")
    ms = d.get("max_side")
    return load_dataset(d.get("path"), max_side=None if ms is None else int(ms), limit=d.get("limit"),
                        limits=limits(cfg), on_error=str(d.get("on_error", "skip")))


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


def run_evaluate(cfg: Any) -> int:
    names, iqa_side = metric_settings(cfg)
    out = Path(str(cfg.out)).expanduser()
    ds = dataset_from_cfg(cfg)
    rows: list[dict[str, Any]] = []
    failures = list(ds.failures)
    if cfg.get("outputs"):
        odir = Path(str(cfg.outputs)).expanduser()
        if not odir.is_dir():
            raise ConfigError(f"outputs={odir} is not a folder")
        by_stem = {p.stem: p for p in list_images(odir)}
        detector = FaceDetector()
        tile = int(cfg.get("tile") or 0)
        for it in tqdm(ds.items, desc="evaluate", unit="img"):
            if it.name not in by_stem:
                failures.append((it.path, f"no output named {it.name}.* in {odir}"))
                log.error("no output for %s in %s", it.name, odir)
                continue
            try:
                o = decode(by_stem[it.name], limits=limits(cfg)).rgb
            except ImageError as e:
                failures.append((by_stem[it.name], str(e)))
                log.error("skipped: %s", e)
                continue
            ih, iw = it.image.size
            if abs((o.shape[0] / ih) / (o.shape[1] / iw) - 1) > 0.02:
                msg = (f"{by_stem[it.name]}: {o.shape[1]}x{o.shape[0]} is not an upscale of {it.path.name} "
                       f"({iw}x{ih} after dataset.max_side={ds.max_side}); with outputs= use dataset.max_side=null")
                failures.append((by_stem[it.name], msg))
                log.error("skipped: %s", msg)
                continue
            analysis = M.InputAnalysis(it.image.rgb, detector(it.image.rgb), o.shape[:2])
            vals, extra = score_one(o, analysis, names, tile=tile, face_mask=None, iqa_max_side=iqa_side)
            rows.append({"image": it.name, **vals, **extra})
    else:
        from .pipeline import Pipeline

        pc = pipeline_config(cfg)
        pipe = Pipeline(pc.spec, store=pc.store, cache=pc.cache)
        for it in tqdm(ds.items, desc="evaluate", unit="img"):
            try:
                res = pipe.run(it.image, pc.params)
            except PipelineError as e:
                failures.append((it.path, str(e)))
                log.error("skipped: %s", e)
                continue
            if cfg.get("save_outputs"):
                encode(res.image, out / "images" / f"{it.name}.png")
            analysis = analysis_for(it, res, pipe)
            vals, extra = score_one(res.image.rgb, analysis, names, tile=res.tile, face_mask=res.face_mask,
                                    iqa_max_side=iqa_side)
            rows.append({"image": it.name, **vals, **extra})
    if not rows:
        raise ConfigError("no image could be scored; see the errors above")
    df = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "metrics.csv", index=False)
    summary = summarize(df, names)
    summary.to_csv(out / "summary.csv", index=False)
    with pd.option_context("display.width", 160, "display.max_columns", 10):
        log.info("summary over %d image(s):\n%s", len(df), summary.to_string(index=False, float_format="%.3f"))
    for f, why in failures:
        log.error("FAILED %s: %s", f, why)
    log.info("wrote %s and %s", out / "metrics.csv", out / "summary.csv")
    from .commands import EXIT_PARTIAL

    return EXIT_PARTIAL if failures else 0


def analysis_for(item: Item, res: Any, pipe: Any) -> M.InputAnalysis:
    """The input analysis for a pipeline result (faces from the pipeline's own detector cache)."""
    faces = res.faces if res.faces else pipe.detect(item.image)
    a = M.InputAnalysis(item.image.rgb, faces, res.image.rgb.shape[:2])
    a.__dict__["reference"] = res.reference  # reuse R instead of recomputing it
    return a
