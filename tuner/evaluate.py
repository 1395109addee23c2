"""`tuner evaluate`: score every image of a set, from the pipeline or from existing outputs.

Three modes:
- the pipeline over a dataset (``dataset.path``, default the bundled portraits);
- existing outputs matched to their inputs by file stem (``outputs=DIR dataset.path=INPUTS``);
- existing outputs alone (``outputs=DIR`` with no ``dataset.path``): NR-only scoring of any
  folder of images; metrics that need the input are NaN with the note "needs input".

Writes ``metrics.csv`` (one row per image, one column per metric, plus ``notes`` saying
why a value is missing) and ``summary.csv`` (mean, median, p10, p90 per metric), atomically.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from . import metrics as M
from .config import dataset_from_cfg, limits, metric_settings, pipeline_config, to_dict
from .errors import ConfigError, ImageError, PipelineError
from .faces import FaceDetector
from .images import atomic_write_bytes, decode, encode, list_images
from .scoring import analysis_for, score_one, summarize

log = logging.getLogger("tuner")


def detector_from_cfg(cfg: Any) -> FaceDetector:
    """The face detector the config names (``face.detector``, ``face.detection_threshold``)."""
    from .config import weight_store
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


def nr_only(cfg: Any, names: list[str], iqa_side: int, odir: Path) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """Score every image in ``odir`` with the metrics that need no input; the rest are NaN, "needs input"."""
    nr = [n for n in names if not M.get(n).needs]
    if not nr:
        raise ConfigError(f"outputs= without dataset.path scores no-reference metrics only, and none of {names} is "
                          "one (niqe, brisque, piqe, ...); give dataset.path=INPUTS to score against the inputs")
    log.info("no dataset.path: NR-only scoring of %s with %s (give dataset.path=INPUTS for the other metrics)",
             odir, nr)
    rows, failures = [], []
    for f in tqdm(list_images(odir), desc="evaluate", unit="img"):
        try:
            o = decode(f, limits=limits(cfg)).rgb
        except ImageError as e:
            failures.append((f, str(e)))
            log.error("skipped: %s", e)
            continue
        # NR metrics read only the output: an analysis of the output itself stands in for the input
        ctx = M.Context(o, M.InputAnalysis(o, [], o.shape[:2]), iqa_max_side=iqa_side)
        vals = {n: (M.score(ctx, [n])[n] if n in nr else math.nan) for n in names}
        notes = {**ctx.notes, **{n: "needs input" for n in names if n not in nr}}
        rows.append({"image": f.stem, **vals, "notes": "; ".join(f"{k}: {v}" for k, v in notes.items())})
    return rows, failures


def run_evaluate(cfg: Any) -> int:
    names, iqa_side = metric_settings(cfg)
    out = Path(str(cfg.out)).expanduser()
    rows: list[dict[str, Any]] = []
    failures: list[tuple[Path, str]] = []
    ds_path = (to_dict(cfg.get("dataset")) or {}).get("path")
    if cfg.get("outputs") and ds_path in (None, "", "null"):
        odir = Path(str(cfg.outputs)).expanduser()
        if not odir.is_dir():
            raise ConfigError(f"outputs={odir} is not a folder")
        rows, failures = nr_only(cfg, names, iqa_side, odir)
    elif cfg.get("outputs"):
        ds = dataset_from_cfg(cfg)
        failures = list(ds.failures)
        odir = Path(str(cfg.outputs)).expanduser()
        if not odir.is_dir():
            raise ConfigError(f"outputs={odir} is not a folder")
        by_stem = {p.stem: p for p in list_images(odir)}
        detector = detector_from_cfg(cfg)
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

        ds = dataset_from_cfg(cfg)
        failures = list(ds.failures)
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
    atomic_write_bytes(out / "metrics.csv", df.to_csv(index=False).encode())
    summary = summarize(df, names)
    atomic_write_bytes(out / "summary.csv", summary.to_csv(index=False).encode())
    with pd.option_context("display.width", 160, "display.max_columns", 10):
        log.info("summary over %d image(s):\n%s", len(df), summary.to_string(index=False, float_format="%.3f"))
    for f, why in failures:
        log.error("FAILED %s: %s", f, why)
    log.info("wrote %s and %s", out / "metrics.csv", out / "summary.csv")
    from .errors import EXIT_PARTIAL

    return EXIT_PARTIAL if failures else 0


