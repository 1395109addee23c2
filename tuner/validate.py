"""Held-out validation of a study tuned on LR/HR pairs: does its result transfer?

A study on the train split of a paired dataset (``dataset.pairs.split=train``) is scored, once it
has finished, on the validation split -- portraits it never saw -- against their ground truth.
Three rows, each per degradation level of the pairs (``clean`` = none):

- ``model defaults``: the model as shipped (the study's baseline settings, texture policy off);
- ``best fixed global``: the best trial that holds every gate with the texture policy off (one
  setting for every image: blend, tile, prefilter, ...);
- ``tuned``: the study's exported trial.

Per row: the images whose skin texture (every face's) is within +-0.5 octave of the real
photograph's (``texture_hr``), its median, the skin-statistics distance (``lbp_hr``), HaarPSI, the *worst*
identity distance, the *worst* LR-PSNR change against the defaults on the same image, and the
study's own gates on the held-out images (each on every image, relative ones against the
defaults row, as the study's baseline) -- a guard rail is per image.  Written to ``validation.csv`` (per image) and ``validation.txt`` in
the run directory, with ``cheeks.png``: 100 % cheek crops per validation face (input Lanczos |
defaults | best fixed | tuned | truth), because people check texture by eye.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import metrics as M
from . import objective as O
from .errors import ConfigError
from .export import best_trial
from .facegeom import cheek_crop, skin_mask
from .files import atomic_write_bytes
from .images import encode, from_array
from .pipeline import Params, Result
from .storage import first_line
from .trials import baseline_settings, per_image_values

log = logging.getLogger("tuner")

NEEDS = ("texture_hr", "texture_hr_least", "lbp_hr", "identity", "lr_psnr")  # what the table reads; haarpsi_hr where scored
WITHIN = 0.5  # octaves
CROP = 96


def scored(names: list[str], held_out: Any) -> list[str]:
    """A study's metric names, once each, with ``texture_hr_least`` where a held-out split will be judged on
    ``texture_hr``: the table counts an image within only if each of its faces is (:func:`table`)."""
    judged = ["texture_hr"] if held_out is not None and "texture_hr" in names else []
    return list(dict.fromkeys([*names, *M.least_siblings(judged)]))


def rows_to_score(study: Any, objective: O.Objective, runner: Any, tuned: Any) -> list[tuple[str, str, Any, Params]]:
    """(label, trial number, spec, params) of the three rows: the study's baseline settings with the
    policy off, the best trial with the policy off that holds every gate (left out, with a warning,
    where there is none), and ``tuned``, the exported trial."""
    out: list[tuple[str, str, Any, Params]] = [
        ("model defaults", "baseline", runner.base, replace(baseline_settings(study, runner), texture_target=None))]
    try:
        fixed, _ = best_trial(study, objective, allow_infeasible=False,
                              keep=lambda t: t.user_attrs["settings"]["params"].get("texture_target") is None)
        out.append(("best fixed global", str(fixed.number), *runner.settings_of(fixed)))
    except ConfigError as e:  # no such trial: the table says so, the other rows still run
        log.warning("validation: no fixed global row: %s", e)
    out.append(("tuned", str(tuned.number), *runner.settings_of(tuned)))
    return out


def table(per_image: pd.DataFrame, base: str = "model defaults",
          gates: dict[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """The per-row, per-set summary of ``per_image`` (columns row, trial, set, image and metrics);
    LR-PSNR and HaarPSI are compared per image with row ``base`` (the worst change is shown);
    ``gates[(row, set)]`` is shown where given."""
    missing = [m for m in NEEDS if m not in per_image]  # texture_hr_least too: without it a group photograph's
    if missing:                                          # waxy face would go uncounted (validate.scored adds it)
        raise ValueError(f"the validation table needs the columns {missing}")
    ref = per_image[per_image.row == base].set_index(["set", "image"])

    def worst_change(d: pd.DataFrame, m: str) -> float:  # per image against row ``base``, the worst one
        diff = d[m].to_numpy(float) - ref[m].reindex(pd.MultiIndex.from_frame(d[["set", "image"]])).to_numpy(float)
        return float(np.nanmin(diff)) if np.isfinite(diff).any() else math.nan

    out = []
    for (row, trial, level), d in per_image.groupby(["row", "trial", "set"], sort=False):
        t = d.texture_hr.to_numpy(float)
        ok = t[np.isfinite(t)]
        # an image with several faces is within only if its least textured face is too (texture_hr is its most)
        least = d.texture_hr_least.to_numpy(float)
        far = [O.distance(a, 0.0, b) for a, b in zip(t, least, strict=True) if math.isfinite(a)]
        out.append({"set": level, "row": row, "trial": trial, "images": len(ok),
                    f"within {WITHIN:g} oct": f"{int(np.sum(np.asarray(far) <= WITHIN))}/{len(ok)}",
                    "texture_hr median": float(np.median(ok)) if len(ok) else math.nan,
                    "lbp_hr": float(np.nanmean(d.lbp_hr)) if d.lbp_hr.notna().any() else math.nan,
                    **({"haarpsi_hr": float(np.nanmean(d.haarpsi_hr)),
                        "haarpsi_hr worst vs defaults": worst_change(d, "haarpsi_hr")} if "haarpsi_hr" in d else {}),
                    "identity max": float(np.nanmax(d.identity)) if d.identity.notna().any() else math.nan,
                    "lr_psnr mean": float(np.nanmean(d.lr_psnr)),
                    "lr_psnr worst vs defaults": worst_change(d, "lr_psnr"),
                    **({"gates (every image)": gates.get((row, level), "")} if gates is not None else {})})
    sets = list(dict.fromkeys(per_image.set))  # first-seen order: the dataset's
    return pd.DataFrame(out).sort_values("set", kind="stable", key=lambda c: c.map(sets.index))


def lines(study: Any, objective: O.Objective, runner: Any, run_dir: Path, tuned: Any, *, rerun: bool) -> list[str]:
    """:func:`run`'s summary lines, or one saying why it failed (the study's preset stands either way).
    Without ``rerun`` (another worker logged this result) an existing ``validation.txt`` for the
    same trial is quoted instead of scored again."""
    done = run_dir / "validation.txt"
    if not rerun and done.is_file() and f"tuned trial {tuned.number}\n" in done.read_text():
        return [f"validation ({done}):", *done.read_text().splitlines()[1:]]
    try:
        return run(study, objective, runner, run_dir, tuned)
    except Exception as e:  # logged with its traceback, and said in the summary: not swallowed
        log.exception("validation of the held-out split failed")
        return [f"validation failed: {first_line(e)}"]


def run(study: Any, objective: O.Objective, runner: Any, run_dir: Path, tuned: Any) -> list[str]:
    """Score the three rows on ``runner``'s dataset (the validation split); write the files; return
    the table as summary lines."""
    ds = runner.dataset
    missing = [m for m in NEEDS if m not in runner.metric_names]
    if missing:
        return [f"validation: not run: the metric set lacks {missing}"]
    records, outputs, rows_of = [], {}, {}
    for label, trial, spec, params in rows_to_score(study, objective, runner, tuned):
        rows, outputs[label] = runner.evaluate(spec, params)
        rows_of[label] = rows
        for r in rows:
            records.append({"row": label, "trial": trial, "set": level_name(ds.items[r["index"]]), "image": r["image"],
                            **{m: r.get(m, math.nan) for m in (*NEEDS, "haarpsi_hr", "pores_hr")
                               if m in runner.metric_names}})
    gates = held_out_gates(objective, rows_of, {it.name: level_name(it) for it in ds.items})
    per_image = pd.DataFrame(records)
    atomic_write_bytes(run_dir / "validation.csv", per_image.to_csv(index=False).encode())
    text = table(per_image, gates=gates).to_string(index=False, float_format=lambda v: f"{v:.3f}")
    atomic_write_bytes(run_dir / "validation.txt",
                       (f"validation split: {len(ds.items)} images, tuned trial {tuned.number}\n{text}\n").encode())
    sheet = cheek_sheet(ds.items, outputs, run_dir / "cheeks.png")
    return [f"validation ({len(ds.items)} held-out images; {run_dir / 'validation.txt'}):", *text.splitlines(),
            f"cheek crops: {sheet}" if sheet else "cheek crops: no face with enough skin"]


def held_out_gates(objective: O.Objective, rows_of: dict[str, list[dict[str, Any]]],
                   level_of: dict[str, str]) -> dict[tuple[str, str], str]:
    """The study's gates on the held-out images, per (row, set): "all hold", or each broken gate with
    its value and image.  Each gate on every image; relative ones against the ``model defaults`` row
    (the study's baseline settings)."""
    baseline: dict[str, Any] = per_image_values(rows_of["model defaults"], [c.metric for c in objective.constraints])
    out = {}
    for label, rows in rows_of.items():
        for level in dict.fromkeys(level_of.values()):
            subset = [r for r in rows if level_of[r["image"]] == level]
            bad = [f"{c.metric} {c.bounds()}: {g.value:.3g} ({g.image})"
                   for c, g in zip(objective.constraints, objective.gates(subset, baseline), strict=True)
                   if g.violation > 0]
            out[(label, level)] = "; ".join(bad) if bad else "all hold"
    return out


def level_name(item: Any) -> str:
    """The set a held-out item belongs to: ``clean`` or its degradation level."""
    return "clean" if item.level in (None, "none") else str(item.level)


def cheek_sheet(items: list[Any], outputs: dict[str, list[Result]], path: Path) -> Path | None:
    """One row per item with a face: 100 % cheek crops of input Lanczos | each output | truth."""
    labels = list(outputs)
    rows = []
    for i, it in enumerate(items):
        res = outputs[labels[-1]][i]
        panels = [res.reference, *(outputs[k][i].image.rgb for k in labels), *([it.hr] if it.hr is not None else [])]
        crop = cheek_crop(skin_mask(res.reference, [f.scaled(res.scale) for f in res.faces]), CROP) if res.faces else None
        if crop is None or any(p.shape[:2] != res.reference.shape[:2] for p in panels):
            continue
        cells = [np.pad(p[crop], ((0, CROP - p[crop].shape[0]), (0, CROP - p[crop].shape[1]), (0, 0))) for p in panels]
        rows.append(np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=1.0) for c in cells], axis=1))
    if not rows:
        return None
    encode(from_array(np.concatenate(rows, axis=0).astype(np.float32)), path)
    return path
