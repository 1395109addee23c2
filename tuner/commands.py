"""The commands behind ``tuner <command>``: each takes the composed config and returns an exit code.

Exit codes: 0 = all done; 1 = error (nothing or little done); 3 = done, but some inputs
were bad and skipped (each one reported).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .config import OUTPUT_FORMATS, limits, pipeline_config, to_dict
from .errors import EXIT_PARTIAL, ConfigError, PresetError, flag
from .files import list_images
from .images import decode, fit_max_side

log = logging.getLogger("tuner")


def input_files(path: str | Path) -> list[Path]:
    p = Path(str(path)).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = list_images(p)
        if not files:
            raise ConfigError(f"input folder {p} holds no images ({', '.join(('png', 'jpg', 'webp', 'tif', 'bmp'))})")
        return files
    raise ConfigError(f"input={p} does not exist")


def destinations(files: list[Path], out_dir: Path, fmt: str) -> list[Path]:
    """The output path of each input (``output/<stem><suffix>``), worked out before any work.

    Raises :class:`ConfigError` when two inputs would be written to one output, or when an
    output would be an input file itself (the original would be overwritten)."""
    dests = [out_dir / f"{f.stem}{f.suffix if fmt == 'same' else '.' + fmt}" for f in files]
    by_dest: dict[str, tuple[Path, list[Path]]] = {}
    for f, d in zip(files, dests, strict=True):  # by name without case: a.png and A.png are one file on macOS
        by_dest.setdefault(str(d.resolve()).casefold(), (d, []))[1].append(f)
    clashes = [f"{', '.join(f.name for f in fs)} -> {d}" for d, fs in by_dest.values() if len(fs) > 1]
    if clashes:
        raise ConfigError(f"several inputs would be written to the same output ({'; '.join(clashes)}; "
                          f"output_format={fmt}): rename them, or enhance them into separate output= folders")
    # the same file, however it is spelt (links, a case-insensitive file system): compare inodes
    inputs = {_file_id(f): f for f in files}
    hit = [(f, inputs[_file_id(d)]) for f, d in zip(files, dests, strict=True) if d.exists() and _file_id(d) in inputs]
    if hit:
        raise ConfigError(f"output={out_dir} with output_format={fmt} would overwrite input file(s): "
                          f"{'; '.join(f'{f.name} -> {g}' for f, g in hit)}; choose another output= folder")
    return dests


def _file_id(p: Path) -> tuple[int, int]:
    st = os.stat(p)
    return st.st_dev, st.st_ino


def enhance(cfg: Any) -> int:
    from .memory import budget_bytes
    from .pipeline import Pipeline
    from .preset import load as load_preset
    from .scoring import input_failed, write_output

    pc = pipeline_config(cfg)
    files = input_files(cfg.input)
    out_dir = Path(str(cfg.output)).expanduser()
    fmt = str(cfg.get("output_format", "same"))
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"output_format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
    dests = destinations(files, out_dir, fmt)
    on_error = str(cfg.get("on_error", "skip"))
    if on_error not in ("skip", "fail"):
        raise ConfigError(f"on_error must be skip or fail, got {on_error!r}")
    lim = limits(cfg)
    max_side = cfg.get("max_side")
    # each input is seen once: keep no R between inputs (the memo is for studies)
    pipe = Pipeline(pc.spec, store=pc.store, cache=pc.cache, memo_limit_bytes=0)
    mem = pc.spec.memory
    log.info("memory budget %.1f GB per image (limits.max_memory_gb), outputs up to %d pixels "
             "(limits.max_output_pixels), params.tile=%s", budget_bytes(mem) / 2**30, mem.max_output_pixels, pc.params.tile)
    preset: dict[str, Any] = {}
    if cfg.get("preset"):
        preset = load_preset(cfg.preset)
        check_identity(preset, pipe, allow_mismatch=flag(cfg, "allow_weights_mismatch", False))
        if max_side is None and preset.get("max_side"):
            log.warning("preset was tuned at max_side=%s (a proxy size); enhancing at full size", preset["max_side"])
    # a predicted-anchor offset was tuned at one input size; against truth it is unmeasured above it
    size_checked = bool(preset.get("max_side")
                        and (preset.get("pipeline") or {}).get("texture_anchor") == "predicted")
    failures: list[tuple[Path, str]] = []
    for f, dest in tqdm(list(zip(files, dests, strict=True)), desc="enhance", unit="img", disable=len(files) < 2):
        try:
            image = fit_max_side(decode(f, limits=lim), None if max_side is None else int(max_side), lim, f)
            tuned_side = int(preset.get("max_side") or 0)
            if size_checked and max(image.size) > tuned_side:
                log.warning("%s is %d px on its long side; this preset's texture_target (%s octave from the predicted "
                            "real texture) was tuned on inputs of at most %s px, and its landing against real skin is "
                            "unmeasured above that size (README, Scale): check the skin at this size (said once)",
                            f.name, max(image.size), pc.params.texture_target, tuned_side)
                size_checked = False
            result = pipe.run(image, pc.params)
            write_output(result.image, dest, "output")
            log.info("%s -> %s (%dx%d, tile %d, %.2fs)", f.name, dest, result.image.size[1], result.image.size[0],
                     result.tile, result.timings["total"])
        except Exception as e:  # evaluate's rule: this input fails, the others go on; TunerError stops the run
            if on_error == "fail":
                raise
            input_failed(failures, f, e, max_side="max_side")
    done = len(files) - len(failures)
    log.info("enhanced %d of %d image(s) into %s", done, len(files), out_dir)
    for f, why in failures:
        log.error("FAILED %s: %s", f, why)
    if failures and done == 0:
        return 1
    return EXIT_PARTIAL if failures else 0


def check_identity(preset: dict[str, Any], pipe: Any, *, allow_mismatch: bool = False) -> None:
    """The weights resolved now (SR model(s) and face model) must be the ones the preset was tuned with;
    ``allow_mismatch`` (``allow_weights_mismatch=true``) turns a refusal into a warning."""
    from .weights import content_hash

    problems = []
    want = [(m["name"], m["sha256"]) for m in preset.get("model_identity") or []]
    if not want:
        log.warning("this preset records no model_identity (hand-written?): the SR weights cannot be checked "
                    "against the ones it was tuned with")
    if want:
        have = [(n, s) for n, s, _ in pipe.model_identity(preset["params"].get("denoise"))]
        if want != have:
            problems.append(f"SR weights: the preset was tuned with {want} but these resolved: {have}")
    face = preset.get("face_identity") or {}
    if face.get("sha256") and pipe.spec.face is not None:
        have_face = content_hash(pipe.store.resolve(pipe.spec.face))
        if have_face != face["sha256"]:
            problems.append(f"face weights: the preset was tuned with {face.get('name')} sha256 {face['sha256']} "
                            f"but {pipe.spec.face.name} resolved to sha256 {have_face}")
    if not problems:
        return
    msg = "; ".join(problems) + ". Outputs would differ from the tuned ones"
    if allow_mismatch:
        log.warning("%s (allow_weights_mismatch=true: going on)", msg)
        return
    raise PresetError(msg + ": point weights_dir= at the files the preset names, or pass allow_weights_mismatch=true")


def weights(cfg: Any) -> int:
    from .weights import WeightStore, catalogue, content_hash

    paths = cfg.get("paths")
    store = WeightStore(weights_dir=cfg.get("weights_dir"), allow_download=False,
                        cache_dir=Path(str(paths.cache_dir)).expanduser() / "weights" if paths is not None else None)
    rows = []
    for group in ("model", "face", "detector"):
        for name, spec in catalogue(group).items():
            loc = store.locate(spec)
            if loc.path is None:
                state, where = "missing", f"fetch {spec.url}"
            else:
                where = str(loc.path)
                if loc.verified is True:
                    state = "verified"
                elif loc.verified is False:
                    state = "SHA256 MISMATCH"
                else:
                    state = "present"
                    if flag(cfg, "verify", True):
                        state += f" (sha256 {content_hash(loc.path)[:12]}…, not pinned)"
            rows.append((group, name, state, where))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"{'group':<{w[0]}}  {'name':<{w[1]}}  {'status':<{w[2]}}  location")
    for r in rows:
        print(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}")
    return 0


def metrics(cfg: Any) -> int:
    from .metrics import table

    rows = table(cfg_metrics=to_dict(cfg.get("pyiqa_extra")) or [])
    cols = ["name", "direction", "range", "needs", "cost", "available"]
    w = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(f"{c:<{w[c]}}" for c in cols))
    for r in rows:
        print("  ".join(f"{str(r[c]):<{w[c]}}" for c in cols))
    return 0


def evaluate(cfg: Any) -> int:
    """Score the pipeline on a set, existing outputs against their inputs, or any folder (NR-only)."""
    import pandas as pd

    from . import scoring
    from .config import dataset_from_cfg, detector_from_cfg, metric_settings

    names, iqa_side = metric_settings(cfg)
    out = Path(str(cfg.out)).expanduser()
    outputs = Path(str(cfg.outputs)).expanduser() if cfg.get("outputs") else None
    if outputs is not None and not outputs.is_dir():
        raise ConfigError(f"outputs={outputs} is not a folder")
    if outputs is not None and (to_dict(cfg.get("dataset")) or {}).get("path") in (None, "", "null"):
        rows, failures = scoring.score_folder(outputs, names, iqa_max_side=iqa_side, limits=limits(cfg))
    elif outputs is not None:
        rows, failures = scoring.score_outputs(dataset_from_cfg(cfg), outputs, names, detector=detector_from_cfg(cfg),
                                               tile=int(cfg.get("tile") or 0), iqa_max_side=iqa_side,
                                               limits=limits(cfg))
    else:
        from .pipeline import Pipeline

        ds = dataset_from_cfg(cfg)
        pc = pipeline_config(cfg)
        rows, failures = scoring.score_pipeline(ds, Pipeline(pc.spec, store=pc.store, cache=pc.cache), pc.params,
                                                names, iqa_max_side=iqa_side,
                                                save_dir=out / "images" if flag(cfg, "save_outputs", False) else None)
    summary = scoring.write_tables(rows, names, out)
    with pd.option_context("display.width", 160, "display.max_columns", 10):
        log.info("summary over %d image(s):\n%s", len(rows), summary.to_string(index=False, float_format="%.3f"))
    for f, why in failures:
        log.error("FAILED %s: %s", f, why)
    log.info("wrote %s and %s", out / "metrics.csv", out / "summary.csv")
    return EXIT_PARTIAL if failures else 0


def tune(cfg: Any) -> int:
    from hydra.core.hydra_config import HydraConfig

    from .config import redacted_yaml, tune_job
    from .files import atomic_write_bytes
    from .study import run_tune

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    job = tune_job(cfg, run_dir)
    # what this worker ran with (Hydra's own .hydra/ copy is off: it keeps passwords)
    atomic_write_bytes(run_dir / "config.yaml", redacted_yaml(cfg).encode())
    return run_tune(job)


def export(cfg: Any) -> int:
    from .config import study_run_dir, study_settings
    from .export import run_export

    number = cfg.get("trial")
    return run_export(study_settings(cfg, study_run_dir(cfg)), Path(str(cfg.out)),
                      number=None if number is None else int(number),
                      allow_infeasible=flag(cfg, "allow_infeasible", False))


def compare(cfg: Any) -> int:
    import json

    from .compare import compare as run_compare
    from .compare import summary_table
    from .config import compare_job
    from .errors import EXIT_COMPARE_FAIL
    from .files import atomic_write_bytes

    job = compare_job(cfg)
    log.info("baseline: %s\ncandidate: %s", job.baseline.source, job.candidate.source)
    result = run_compare(job.dataset, job.baseline, job.candidate, job.rules, metric_names=job.metric_names,
                         iqa_max_side=job.iqa_max_side, store=job.store, cache=job.cache, out=job.out)
    atomic_write_bytes(job.out / "compare.json", json.dumps(result, indent=1).encode())
    n = result["reused"]["of"]
    for side in ("baseline", "candidate"):
        r = result["reused"][side]
        log.info("%s: reused from the stage cache: upscale %d/%d, face restoration %d/%d", side, r.get("sr", 0), n,
                 r.get("restore", 0), n)
    print(summary_table(result))
    if job.report:
        from .report import compare_report

        log.info("report: %s", compare_report(result, job.out, job.out / "report.html"))
    print(f"verdict: {result['verdict'].upper()}" + (f" ({', '.join(result['failed'])})" if result["failed"] else ""))
    log.info("wrote %s", job.out / "compare.json")
    return EXIT_COMPARE_FAIL if result["verdict"] == "fail" else 0


def report(cfg: Any) -> int:
    from .config import study_run_dir, study_settings

    src = cfg.get("eval")
    name = Path(str(src)).name if src else str(cfg.study.name)
    out = Path(str(cfg.out)) if cfg.get("out") else Path(str(cfg.paths.reports_dir)) / name
    if src:
        import json

        from .report import compare_report, evaluate_report

        folder = Path(str(src))
        if (folder / "compare.json").is_file():
            path = compare_report(json.loads((folder / "compare.json").read_text()), folder, out / "report.html")
        else:
            path = evaluate_report(folder, out / "report.html")
    else:
        from .study_report import study_report

        path = study_report(study_settings(cfg, study_run_dir(cfg)), study_run_dir(cfg), out / "report.html")
    log.info("report: %s", path)
    print(path)
    return 0
