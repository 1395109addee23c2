"""Does a setting transfer?  Skin texture against ground truth on the LR/HR pairs.

    python benchmarks/bench_transfer.py [--split val] [--max-side 256] [--target 3.3] [--preset runs/default/best_preset.yaml]
    python benchmarks/bench_transfer.py --fit [--max-side 256]     # where the target comes from (train split only)

For the clean and the degraded (medium) pairs of the bundled portraits, rows:
- the model defaults (realesr-general-x4v3 and RealESRGAN_x4plus as shipped),
- the best fixed global preset (``--preset``, the default study's export, if it exists),
- the texture policy (general-x4v3 with ``params.texture_target=--target``),
and per row: faces whose skin texture is within +-0.5 octave of the truth's (``texture_hr``),
its median, the LBP-statistics distance and HaarPSI to the truth, the worst identity distance,
and the mean LR-PSNR.  ``--fit`` instead measures, per face, the truth's skin texture above a
Lanczos upscale of the LR (octaves, crunch's band): its median on the *train* split is the
policy's target; it also tries a no-reference predictor (the input's own gap one octave down,
fitted linearly on the train split) and prints its error on the validation split.  Also writes a contact sheet of 100 % cheek crops per face
(input Lanczos | general default | policy | HR) to ``benchmarks/results/cheeks_<set>.png``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from _common import ROOT, WEIGHTS, need_weights

from tuner import preset as presets
from tuner.cache import StageCache
from tuner.dataset import Pairs, load
from tuner.images import encode, from_array
from tuner.pipeline import Params, Pipeline, PipelineSpec
from tuner.report import cheek_crop
from tuner.scoring import Scorer
from tuner.weights import WeightStore, catalogue

NAMES = ["texture_hr", "pores_hr", "lbp_hr", "haarpsi_hr", "identity", "lr_psnr"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="val", choices=["val", "train", "all"])
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("--target", type=float, default=3.3)
    ap.add_argument("--fit", action="store_true", help="measure the target on the train split and exit")
    ap.add_argument("--no-x4plus", action="store_true", help="leave out RealESRGAN_x4plus (slow on CPU at 512 px)")
    ap.add_argument("--preset", default=str(ROOT / "runs" / "default" / "best_preset.yaml"))
    a = ap.parse_args()
    if a.fit:
        fit(a.max_side)
        return
    need_weights("realesr-general-x4v3.pth", "RealESRGAN_x4plus.pth")
    models = catalogue("model")
    store = WeightStore(weights_dir=WEIGHTS, allow_download=False)
    cache = StageCache(Path.home() / ".cache" / "tuner" / "stages")
    general = PipelineSpec(model=models["realesr-general-x4v3"])
    rows_spec: list[tuple[str, PipelineSpec, Params]] = [
        ("general-x4v3 default", general, Params()),
    ]
    if not a.no_x4plus:
        rows_spec.append(("x4plus default", PipelineSpec(model=models["RealESRGAN_x4plus"]), Params()))
    if Path(a.preset).is_file():
        st = presets.settings_of(presets.load(a.preset))
        rows_spec.append((f"preset {Path(a.preset).parent.name}/{Path(a.preset).name}",
                          st.spec(general, models, catalogue("face")),
                          st.params))
    rows_spec.append((f"policy (general, texture_target={a.target:g})", general, Params(texture_target=a.target)))
    out_dir = ROOT / "benchmarks" / "results"
    table = []
    for level, label in (("none", "clean"), ("medium", "degraded")):
        ds = load(None, max_side=a.max_side, pairs=Pairs(degradation=level, split=a.split))
        sheets: dict[str, list[np.ndarray]] = {}
        for name, spec, params in rows_spec:
            pipe = Pipeline(spec, store=store, cache=cache)
            scorer = Scorer(NAMES, iqa_max_side=1024, detector="retinaface", detection_threshold=0.9, cache=cache)
            vals = []
            for it in ds.items:
                res = pipe.run(it.image, params)
                analysis = scorer.analysis(it, res, pipe)
                v, _ = scorer.score(res, analysis)
                vals.append(v)
                if name.startswith(("general-x4v3", "policy")):
                    sheets.setdefault(it.name, [analysis.reference, it.hr] if it.hr is not None else [])
                    sheets[it.name].insert(-1, res.image.rgb)
            t = np.array([v["texture_hr"] for v in vals])
            ok = t[np.isfinite(t)]
            table.append({"set": label, "pipeline": name, "faces": len(ok),
                          "within 0.5 oct": f"{int(np.sum(np.abs(ok) <= 0.5))}/{len(ok)}",
                          "texture_hr median": float(np.median(ok)) if len(ok) else math.nan,
                          "lbp_hr": float(np.nanmean([v["lbp_hr"] for v in vals])),
                          "haarpsi_hr": float(np.nanmean([v["haarpsi_hr"] for v in vals])),
                          "identity max": float(np.nanmax([v["identity"] for v in vals])),
                          "lr_psnr": float(np.nanmean([v["lr_psnr"] for v in vals]))})
        _cheek_sheet(ds, sheets, out_dir / f"cheeks_{label}.png")
    print(f"split {a.split}, LR max side {a.max_side} (x4 outputs), policy target {a.target:g}:")
    print(pd.DataFrame(table).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"contact sheets: {out_dir}/cheeks_clean.png, cheeks_degraded.png "
          "(per face: input Lanczos | general default | policy | HR)")


def fit(max_side: int) -> None:
    """The truth's skin texture above Lanczos per face, and a no-reference predictor of it."""
    from tuner.degrade import in_validation
    from tuner.facegeom import skin_mask
    from tuner.faces import FaceDetector
    from tuner.images import luminance, reference_upscale
    from tuner.texture import hf

    def energy(y: np.ndarray, m: np.ndarray, s: float) -> float:
        return float(np.mean(hf(y, s)[m] ** 2))

    rows = []
    detect = FaceDetector()
    for level in ("none", "medium"):
        for it in load(None, max_side=max_side, pairs=Pairs(degradation=level)).items:
            lr, hr = it.image.rgb, it.hr
            faces = detect(lr)
            ref = reference_upscale(lr, hr.shape[:2])
            m = skin_mask(ref, [f.scaled(4) for f in faces]) if faces else None
            h2, w2 = lr.shape[0] // 2 * 2, lr.shape[1] // 2 * 2
            small = lr[:h2, :w2]
            m_in = skin_mask(small, faces) if faces else None
            if m is None or m.sum() < 200 or m_in is None or m_in.sum() < 50:
                continue
            gap = math.log2(energy(luminance(hr), m, 4) / energy(luminance(ref), m, 4))
            down = cv2.resize(small, (w2 // 2, h2 // 2), interpolation=cv2.INTER_AREA)
            g2 = math.log2(energy(luminance(small), m_in, 2) / energy(luminance(reference_upscale(down, (h2, w2))), m_in, 2))
            rows.append({"set": "clean" if level == "none" else "degraded", "face": it.name,
                         "val": in_validation(it.name), "gap": gap, "own_gap": g2})
    df = pd.DataFrame(rows)
    train, val = df[~df.val], df[df.val]
    print(f"truth's skin texture above a Lanczos upscale, octaves (LR max side {max_side}):")
    for name, d in df.groupby("set"):
        t = d[~d.val]
        print(f"  {name}: train median {t.gap.median():.2f} (range {d.gap.min():.2f}..{d.gap.max():.2f}, "
              f"{len(d)} faces); corr(own gap, gap) {np.corrcoef(d.own_gap, d.gap)[0, 1]:.2f}")
    print(f"  target = train median, both sets: {train.gap.median():.2f}")
    coef = np.polyfit(train.own_gap, train.gap, 1)
    err = np.abs(np.polyval(coef, val.own_gap) - val.gap)
    print(f"  predictor gap ~ {coef[1]:.2f} + {coef[0]:.2f} * own_gap (train fit): validation median |error| "
          f"{np.median(err):.2f} octave over {len(val)} faces; a constant (the target): "
          f"{np.median(np.abs(val.gap - train.gap.median())):.2f}")


def _cheek_sheet(ds, sheets, path: Path) -> None:  # type: ignore[no-untyped-def]
    from tuner.facegeom import skin_mask
    from tuner.faces import FaceDetector

    rows = []
    detect = FaceDetector()
    for it in ds.items:
        panels = sheets.get(it.name)
        if not panels or len(panels) != 4:
            continue
        faces = detect(it.image.rgb)
        s = panels[0].shape[1] / it.image.rgb.shape[1]
        crop = cheek_crop(skin_mask(panels[0], [f.scaled(s) for f in faces]), 96) if faces else None
        if crop is None:
            continue
        cells = [np.pad(p[crop], ((0, 96 - p[crop].shape[0]), (0, 96 - p[crop].shape[1]), (0, 0))) for p in panels]
        rows.append(np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=1.0) for c in cells], axis=1))
    if rows:
        encode(from_array(np.concatenate(rows, axis=0).astype(np.float32)), path)


if __name__ == "__main__":
    main()
