"""Does a setting transfer?  Skin texture against ground truth on the LR/HR pairs.

    python benchmarks/bench_transfer.py [--split val] [--max-side 256] [--target 3.3] [--preset P.yaml ...]
    python benchmarks/bench_transfer.py --fit [--max-side 256]     # where the target comes from (train split only)
    python benchmarks/bench_transfer.py --bound [--max-side 256]   # what no target read off the input can know

For the clean and the degraded (medium) pairs of the bundled portraits, rows:
- the model defaults (realesr-general-x4v3 and RealESRGAN_x4plus as shipped),
- presets (``--preset``; by default ``runs/nr`` -- the best fixed global preset of the no-reference
  study, ``tuner tune experiment=nr`` -- and ``runs/default``, the default study's tuned policy),
- the texture policy (general-x4v3) with a fixed target (``--target`` octaves above Lanczos) and
  with a per-image one (``--offset`` octaves above the predicted truth, ``texture_anchor=predicted``),
  that per-image policy on x4plus (a sharper source: ``tuner tune model=RealESRGAN_x4plus``), and on
  general-x4v3 with x4plus's skin mixed in before any grain (``match_texture(sharp=...)``, a second
  source per image; not wired into the pipeline, see the README),
and per row: faces whose skin texture is within +-0.5 octave of the truth's (``texture_hr``),
its median, the LBP-statistics distance and HaarPSI to the truth, the worst identity distance,
and the mean LR-PSNR.  ``--fit`` instead measures, per face, the truth's skin texture above a
Lanczos upscale of the LR (octaves, crunch's band): its median on the *train* split is the
policy's fixed target; it also refits the no-reference predictor (``tuner.texture.GAP_FIT``,
``params.texture_anchor=predicted``) on the train split and prints its error on the validation split,
and, with further sizes (``--sides``, not fitted on), its signed error out of sample by LR size and by
whether the truth is the portrait at its own resolution or a downscale of it.  ``--bound``: per clean
pair, two photographs that differ from the real one only above twice the LR's Nyquist frequency
(that part of its spectrum scaled by 0.5 and by 2), their LRs and their truths (:func:`bound`).  Also writes a contact sheet of 100 % cheek crops per face
(input Lanczos | general default | policy with the predicted anchor | HR) to ``benchmarks/results/cheeks_<set>.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from _common import ROOT, WEIGHTS, need_weights

from tuner import preset as presets
from tuner.cache import StageCache
from tuner.dataset import Pairs, load
from tuner.pipeline import Params, Pipeline, PipelineSpec, Result
from tuner.scoring import Scorer
from tuner.texture import GAP_FIT, GAP_RANGE
from tuner.validate import cheek_sheet
from tuner.validate import table as validation_table
from tuner.weights import WeightStore, catalogue, user_cache_dir

NAMES = ["texture_hr", "texture_hr_least", "pores_hr", "lbp_hr", "haarpsi_hr", "identity", "lr_psnr"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="val", choices=["val", "train", "all"])
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("--target", type=float, default=3.3)
    ap.add_argument("--offset", type=float, default=0.0, help="texture_target of the predicted-anchor policy row")
    ap.add_argument("--fit", action="store_true", help="measure the target on the train split and exit")
    ap.add_argument("--sides", type=int, nargs="*", default=[160, 192],
                    help="with --fit: further LR sizes, for the predictor's bias by size and by the truth's provenance only")
    ap.add_argument("--search", action="store_true",
                    help="with --fit: also rank every subset of up to four candidate features by leave-one-out error")
    ap.add_argument("--bound", action="store_true",
                    help="measure how far apart truths behind (nearly) the same LR can be, and exit")
    ap.add_argument("--no-x4plus", action="store_true", help="leave out RealESRGAN_x4plus (slow on CPU at 512 px)")
    ap.add_argument("--preset", nargs="*", default=[str(ROOT / "runs" / n / "best_preset.yaml") for n in ("nr", "default")],
                    help="presets to score as rows (those that exist); default: the nr and the default study's")
    a = ap.parse_args()
    if a.fit:
        fit(a.max_side, search=a.search, sides=a.sides)
        return
    if a.bound:
        bound(a.max_side)
        return
    need_weights("realesr-general-x4v3.pth", *([] if a.no_x4plus else ["RealESRGAN_x4plus.pth"]))
    models = catalogue("model")
    store = WeightStore(weights_dir=WEIGHTS, allow_download=False)
    cache = StageCache(user_cache_dir() / "stages")
    general = PipelineSpec(model=models["realesr-general-x4v3"])
    rows_spec: list[tuple[str, PipelineSpec, Params]] = [
        ("general-x4v3 default", general, Params()),
    ]
    if not a.no_x4plus:
        rows_spec.append(("x4plus default", PipelineSpec(model=models["RealESRGAN_x4plus"]), Params()))
    for path in (Path(p) for p in a.preset):
        if path.is_file():
            st = presets.settings_of(presets.load(path))
            rows_spec.append((f"preset {path.parent.name}/{path.name}", st.spec(general, models, catalogue("face")),
                              st.params))
    rows_spec.append((f"policy, texture_target={a.target:g} above Lanczos", general, Params(texture_target=a.target)))
    rows_spec.append((f"policy, texture_target={a.offset:g} above the predicted truth", general,
                      Params(texture_target=a.offset, texture_anchor="predicted")))
    x4plus = Pipeline(PipelineSpec(model=models["RealESRGAN_x4plus"]), store=store, cache=cache)
    two_sources = f"policy, x4plus's skin before grain, texture_target={a.offset:g} above the predicted truth"
    grain_alone = rows_spec[-1][0]
    if not a.no_x4plus:  # the same policy with x4plus as its source, and with x4plus as a second source
        rows_spec.append((f"policy on x4plus, texture_target={a.offset:g} above the predicted truth", x4plus.spec,
                          Params(texture_target=a.offset, texture_anchor="predicted")))
        rows_spec.append((two_sources, general, Params(texture_target=a.offset, texture_anchor="predicted")))
    out_dir = ROOT / "benchmarks" / "results"
    records = []
    for level, label in (("none", "clean"), ("medium", "degraded")):
        ds = load(None, max_side=a.max_side, pairs=Pairs(degradation=level, split=a.split))
        sheets: dict[str, list[Result]] = {}
        for name, spec, params in rows_spec:
            pipe = Pipeline(spec, store=store, cache=cache)
            scorer = Scorer(NAMES, iqa_max_side=1024, detector="retinaface", detection_threshold=0.9, cache=cache)
            for it in ds.items:
                res = pipe.run(it.image, params) if name != two_sources else second_source(pipe, x4plus, it, params)
                v, _ = scorer.score(res, scorer.analysis(it, res, pipe))
                records.append({"row": name, "trial": "-", "set": label, "image": it.name, **v,
                                **{f"policy_{k}": one_region(res).get(k, np.nan) for k in ("sharp", "grain")}})
                if name in (rows_spec[0][0], grain_alone):
                    sheets.setdefault(name, []).append(res)
        cheek_sheet(ds.items, sheets, out_dir / f"cheeks_{label}.png")
    print(f"split {a.split}, LR max side {a.max_side} (x4 outputs), policy target {a.target:g}:")
    table = validation_table(pd.DataFrame(records), base="general-x4v3 default").drop(columns="trial")
    print(pd.DataFrame(table).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if not a.no_x4plus:
        paired(pd.DataFrame(records), two_sources, grain_alone)
    print(f"contact sheets: {out_dir}/cheeks_clean.png, cheeks_degraded.png "
          f"(per face: input Lanczos | general default | {grain_alone} | HR)")


def paired(df: pd.DataFrame, two: str, alone: str) -> None:
    """The two-source row against grain alone, image by image: how much of x4plus's skin each face
    took, where grain was still added, and the worst per-image change of each metric."""
    for label, d in df.groupby("set", sort=False):
        t, g = (d[d.row == r].set_index("image") for r in (two, alone))
        took = t.policy_sharp
        none = ", ".join(t.index[took == 0])
        print(f"  {label}: x4plus's skin taken in full on {int((took == 1).sum())}, partly on "
              f"{int(((took > 0) & (took < 1)).sum())}, not at all on {int((took == 0).sum())} of {len(t)} faces"
              f"{f' ({none})' if none else ''}; grain "
              f"still added on {int((t.policy_grain > 0).sum())}; against grain alone, per face: "
              + ", ".join(f"{m} {(t[m] - g[m]).min():+.3f}..{(t[m] - g[m]).max():+.3f}"
                          for m in ("lbp_hr", "haarpsi_hr", "identity", "lr_psnr")))


def one_region(res: Result) -> dict:
    """What the texture policy did on an image with one region (its only face); {} with several or none."""
    return res.texture[0] if res.texture is not None and len(res.texture) == 1 else {}


def second_source(pipe: Pipeline, sharp: Pipeline, it, params: Params) -> Result:  # type: ignore[no-untyped-def]
    """The policy as :meth:`Pipeline.run` applies it (:meth:`Pipeline.texture`: same skin, anchors and
    seeds), with ``sharp``'s upscale as a second source that waxy skin takes before any grain.  (The
    base run is planned without the policy: the same tile as Pipeline.run's for a fixed
    ``params.tile``, which this row uses.)"""
    from dataclasses import replace

    from tuner.hashing import array_hash

    assert params.texture_target is not None
    base = pipe.run(it.image, replace(params, texture_target=None))
    ihash = array_hash(it.image.rgb)
    faces = pipe.detect(it.image, ihash)  # a run without the policy looks for no faces
    labels = pipe.skin(base.reference, ihash, faces, base.scale)
    out, texture = pipe.texture(base.image.rgb, base.reference, labels, it.image, ihash, faces, base.scale, params,
                                sharp=sharp.run(it.image, Params()).sr)
    return replace(base, image=base.image.with_rgb(out, base.image.alpha), faces=faces, texture=texture)


def fit(max_side: int, *, search: bool = False, sides: list[int] | None = None) -> None:
    """The truth's skin texture above Lanczos per face, and the no-reference predictor of it
    (:data:`tuner.texture.GAP_FIT`): refitted here on the train split of every degradation level
    at LR max side 128 and ``max_side``, and scored on the validation split.  ``search``: also
    rank every subset of up to four candidate features (:func:`candidates`) by leave-one-portrait-out
    error on the train split, with their validation error beside it.  ``sides``: further LR sizes, not
    fitted on, for the shipped predictor's signed error by size and by whether the truth is the
    portrait at its own resolution (``native``) or a downscale of it."""
    from PIL import Image as PILImage

    from tuner import metrics as M
    from tuner.degrade import LEVELS, in_validation
    from tuner.faces import FaceDetector
    from tuner.texture import input_features

    rows = []
    detect = FaceDetector()
    pipe = None
    if search:
        need_weights("realesr-general-x4v3.pth")
        pipe = Pipeline(PipelineSpec(model=catalogue("model")["realesr-general-x4v3"]),
                        store=WeightStore(weights_dir=WEIGHTS, allow_download=False),
                        cache=StageCache(user_cache_dir() / "stages"))
    for side in sorted({128, max_side, *(sides or [])}):
        for level in LEVELS:
            for it in load(None, max_side=side, pairs=Pairs(degradation=level)).items:
                lr, hr = it.image.rgb, it.hr
                assert hr is not None  # pairs carry their truth
                faces = detect(lr)
                if not faces:
                    continue
                an = M.InputAnalysis(lr, faces, hr.shape[:2], hr=hr)
                feats = input_features(lr, an.skin_in)
                if an.skin_out.sum() < 200 or feats is None:
                    continue
                # the truth's texture above R is -texture_hr of R itself
                gap = -M.score(M.Context(an.reference, an), ["texture_hr"])["texture_hr"]
                extra = candidates(M, an, it, pipe) if pipe is not None and side in (128, max_side) else {}
                with PILImage.open(it.path) as im:
                    native = max(im.size) <= side * 4  # the HR is the portrait itself, not a downscale of it
                rows.append({"side": side, "level": level, "face": it.name.split("@")[0], "native": native,
                             "val": in_validation(it.name), "gap": gap, **feats, **extra})
    every = pd.DataFrame(rows)
    df = every[every.side.isin([128, max_side])].reset_index(drop=True)  # what the predictor is fitted on
    names = [k for k in GAP_FIT if k != "intercept"]

    def lstsq(d: pd.DataFrame) -> np.ndarray:
        return np.linalg.lstsq(np.c_[np.ones(len(d)), d[names].to_numpy()], d.gap.to_numpy(), rcond=None)[0]

    def predict(c: np.ndarray, d: pd.DataFrame) -> np.ndarray:  # clipped, as tuner.texture.predicted_gap
        return np.clip(np.c_[np.ones(len(d)), d[names].to_numpy()] @ c, *GAP_RANGE)

    train, val = df[~df.val], df[df.val]
    coef = lstsq(train)
    shipped = np.array([GAP_FIT["intercept"], *(GAP_FIT[k] for k in names)])
    print(f"truth's skin texture above a Lanczos upscale, octaves ({len(train)} train, {len(val)} validation rows):")
    for (side, level), d in df.groupby(["side", "level"]):
        t = d[~d.val]
        print(f"  LR {side} px, {level}: train median {t.gap.median():.2f} (train range {t.gap.min():.2f}..{t.gap.max():.2f})")
    both = train[(train.side == max_side) & train.level.isin(["none", "medium"])]
    print(f"  train median at LR {max_side} px, clean + medium: {both.gap.median():.2f} (a fixed target above Lanczos); "
          f"train range, all rows: {train.gap.min():.2f}..{train.gap.max():.2f} (tuner.texture.GAP_RANGE)")
    print("  predictor (train fit): " + ", ".join(f"{k} {v:.2f}" for k, v in zip(["intercept", *names], coef, strict=True))
          + "; shipped in tuner.texture.GAP_FIT: " + ", ".join(f"{v:.2f}" for v in shipped))
    loo = [np.abs(predict(lstsq(train[train.face != f]), d) - d.gap) for f, d in train.groupby("face")]
    print(f"  leave-one-face-out on train: median |error| {np.median(np.concatenate(loo)):.2f} octave")
    const = train.gap.median()  # tuner.texture.GAP_FALLBACK
    print(f"  train median, all rows: {const:.2f} (tuner.texture.GAP_FALLBACK, and the constant compared below)")
    for (side, level), d in val.groupby(["side", "level"]):
        err, err_c = np.abs(predict(shipped, d) - d.gap), np.abs(d.gap - const)
        print(f"  validation, LR {side} px, {level}: median |error| {np.median(err):.2f} octave, within 0.5: "
              f"{int(np.sum(err <= 0.5))}/{len(d)} (a constant {const:.2f}: {np.median(err_c):.2f}, "
              f"{int(np.sum(err_c <= 0.5))}/{len(d)})")
    # every row predicted out of sample: a train portrait's rows by a fit without that portrait (the shipped
    # coefficients' refit, leave one portrait out), a validation portrait's by the train fit itself
    oos = np.full(len(every), np.nan)
    for f in every.face.unique():
        rows_f = (every.face == f).to_numpy()
        oos[rows_f] = predict(lstsq(train[train.face != f]), every[rows_f])
    bias(every, oos)
    # the predictor refitted on native truths only (production's kind: the output stands in for a photograph
    # at that size), one row per photograph and level, scored like the shipped one
    native = every[every.native].sort_values("side").drop_duplicates(["face", "level"])
    nat_train = native[~native.val]
    c_nat = lstsq(nat_train)
    loo_nat = [np.abs(predict(lstsq(nat_train[nat_train.face != f]), d) - d.gap) for f, d in nat_train.groupby("face")]
    print(f"refitted on native truths only ({len(nat_train)} train rows): "
          + ", ".join(f"{k} {v:.2f}" for k, v in zip(["intercept", *names], c_nat, strict=True))
          + f"; leave-one-face-out {np.median(np.concatenate(loo_nat)):.2f} octave")
    for level, d in val[val.side == max_side].groupby("level"):
        e_s, e_n = np.abs(predict(shipped, d) - d.gap), np.abs(predict(c_nat, d) - d.gap)
        print(f"  validation, LR {max_side} px, {level}: median |error| {np.median(e_n):.2f} octave, within 0.5: "
              f"{int(np.sum(e_n <= 0.5))}/{len(d)} (shipped: {np.median(e_s):.2f}, {int(np.sum(e_s <= 0.5))}/{len(d)})")
    if pipe is not None:
        rank(df, max_side)


def bound(max_side: int, cut: float = 2.0, gains: tuple[float, float] = (0.5, 2.0)) -> None:
    """What a no-reference target cannot know.  Per clean pair (LR <= ``max_side``, both splits), the
    photograph's spectrum above ``cut`` x the LR's Nyquist frequency is scaled by each of ``gains``
    (an ideal FFT split; a softer or a sharper camera, lens or noise reduction at the pixel level),
    the result clipped to [0, 1] and made into a clean pair as the dataset does (antialiased bicubic
    x4, 8-bit).  Printed per face: how far the two LRs differ from each other on the skin (grey levels
    of 255; and without the clip to [0, 1], to tell what the clip adds), the truth's skin texture above
    a Lanczos upscale of each LR (``-texture_hr`` of R, octaves, as :func:`fit`) and what the shipped
    predictor reads off each LR.  A target that moves by ``m`` octaves between two inputs whose truths
    are ``d`` apart misses one of them by at least ``(d - m) / 2``."""
    from tuner import metrics as M
    from tuner.degrade import make_lr
    from tuner.faces import FaceDetector
    from tuner.texture import predicted_gap

    def clean_lr(h: np.ndarray) -> np.ndarray:  # the dataset's own clean LR (make_lr does not clip its input)
        return make_lr(h, scale=pairs.scale, level="none", seed=pairs.seed, name="")

    detect = FaceDetector()
    rows = []
    lo, hi = gains
    pairs = Pairs(degradation="none")
    for it in load(None, max_side=max_side, pairs=pairs).items:
        lr, hr = it.image.rgb, it.hr
        assert hr is not None  # pairs carry their truth
        faces = detect(lr)
        if not faces:
            continue
        spec = np.fft.fft2(hr, axes=(0, 1))
        f = np.hypot(*np.meshgrid(np.fft.fftfreq(hr.shape[0]), np.fft.fftfreq(hr.shape[1]), indexing="ij"))
        nyquist = 0.5 * lr.shape[0] / hr.shape[0]  # the LR's, in cycles per HR pixel
        high = np.real(np.fft.ifft2(spec * (f > cut * nyquist)[:, :, None], axes=(0, 1))).astype(np.float32)
        made, unclipped = {}, {}
        for g in (1.0, *gains):
            h = np.clip(hr + (g - 1) * high, 0, 1) if g != 1.0 else hr
            small = lr if g == 1.0 else clean_lr(h)
            if g != 1.0:
                unclipped[g] = clean_lr(hr + (g - 1) * high)
            an = M.InputAnalysis(small, faces, h.shape[:2], hr=h)
            if an.skin_out.sum() < 200:
                break
            gap = -M.score(M.Context(an.reference, an), ["texture_hr"])["texture_hr"]
            made[g] = (small, gap, predicted_gap(small, an.skin_in), an.skin_in)
        if len(made) < 1 + len(gains):
            continue
        skin = made[1.0][3]
        d, du = (np.abs(x[hi] - x[lo])[skin] * 255 for x in ({g: m[0] for g, m in made.items()}, unclipped))
        rows.append({"face": it.name.split("@")[0], "max": float(d.max()), "over_1": float(np.mean(d > 1.5)),
                     "max_unclipped": float(du.max()), "over_1_unclipped": float(np.mean(du > 1.5)),
                     **{f"truth_{g:g}": m[1] for g, m in made.items()}, **{f"pred_{g:g}": m[2] for g, m in made.items()}})
    df = pd.DataFrame(rows)
    a, b = f"{lo:g}", f"{hi:g}"
    print(f"clean pairs, LR <= {max_side} px: the photograph's spectrum above {cut:g}x the LR's Nyquist frequency "
          f"scaled by {a} and by {b} ({len(df)} faces); the two LRs against each other on the skin")
    print(f"  {'face':28} {'max, % > 1 grey level':>22} {'unclipped':>16} {'truth x' + a:>9} {'x1':>6} {'x' + b:>6}  "
          f"{'predicted x' + a:>13} {'x1':>6} {'x' + b:>6}")
    for _, r in df.iterrows():
        print(f"  {r.face:28} {r['max']:12.0f} {100 * r.over_1:9.2f} {r.max_unclipped:6.0f} {100 * r.over_1_unclipped:9.2f} "
              f"{r['truth_' + a]:9.2f} {r.truth_1:6.2f} {r['truth_' + b]:6.2f}  {r['pred_' + a]:13.2f} {r.pred_1:6.2f} "
              f"{r['pred_' + b]:6.2f}")
    apart = df[f"truth_{b}"] - df[f"truth_{a}"]
    moved = (df[f"pred_{b}"] - df[f"pred_{a}"]).abs()
    miss = (apart - moved) / 2
    print(f"  the two LRs differ by more than one grey level on at most {100 * df.over_1.max():.2f} % of a face's skin "
          f"pixels (none on {int((df.over_1 == 0).sum())} faces; by at most {df['max'].max():.0f}); without the clip to "
          f"[0, 1], on at most {100 * df.over_1_unclipped.max():.2f} % (by at most {df.max_unclipped.max():.0f})")
    print(f"  x{a} moves the truth by {(df[f'truth_{a}'] - df.truth_1).min():+.2f}..{(df[f'truth_{a}'] - df.truth_1).max():+.2f}"
          f", x{b} by {(df[f'truth_{b}'] - df.truth_1).min():+.2f}..{(df[f'truth_{b}'] - df.truth_1).max():+.2f} octaves; "
          f"the two truths lie {apart.min():.2f}..{apart.max():.2f} apart (median {apart.median():.2f}); "
          f"the predictor moves by {moved.max():.2f} at most")
    print(f"  so the predictor misses one of each two truths by at least {miss.min():.2f} octave (median face "
          f"{miss.median():.2f}), and so does any target that moves as little between them")


def bias(df: pd.DataFrame, pred: np.ndarray) -> None:
    """The predictor's signed error out of sample (prediction - truth, octaves; + = it expects more
    texture than the real photograph has) by LR size and by the truth's provenance: ``native`` where
    the HR is the portrait at its own resolution, ``downscaled`` where the portrait was larger than the HR."""
    d = df.assign(err=pred - df.gap.to_numpy(), truth=np.where(df.native, "native", "downscaled"))
    g = d.groupby(["truth", "side"]).err
    print("predictor's signed error by LR size and the truth's provenance (every row out of sample: train "
          "portraits left out one at a time; median, with the median |error| and the rows):")
    for (truth, side), e in g:
        print(f"  {truth:>10} truth, LR {side} px: {e.median():+.2f} (|error| {e.abs().median():.2f}, {len(e)} rows)")
    # the same photograph at the same degradation, at two consecutive sizes: the size's share of it vs the provenance's
    err = d.pivot_table(index=["face", "level"], columns="side", values="err")
    nat = d.pivot_table(index=["face", "level"], columns="side", values="native")
    sides = sorted(d.side.unique())
    for a, b in zip(sides, sides[1:], strict=False):
        for label, m in (("downscaled at both", (nat[a] == 0) & (nat[b] == 0)),
                         ("downscaled, then native", (nat[a] == 0) & (nat[b] == 1))):
            diff = (err[b] - err[a])[m].dropna()
            if len(diff):
                print(f"  same photograph and level, LR {a} -> {b} px, truth {label}: the error changes by "
                      f"{diff.median():+.2f} (median of {len(diff)}; {int((diff > 0).sum())} up, "
                      f"{int((diff < 0).sum())} down)")


def candidates(M, an, it, pipe: Pipeline) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Candidate features beyond the shipped three: the next octave's slope (``s23``), the skin's size
    (``skin_px``, log2 LR pixels), JPEG blocking (``block``: log2 of the mean luminance step across
    the 8 px block grid over the mean step elsewhere; 0 = none) and what general-x4v3 itself puts
    in crunch's and wax's bands above R (``sr_hf``, ``sr_mid``, octaves: ``crunch`` and ``-wax`` of
    its output, a learned prior's guess), and the input's self-similarity: its own skin texture above a
    Lanczos upscale of its own x4 downscale, in crunch's band (``self4``), and of its x2 downscale in
    wax's band (``selfm2``), octaves -- the gap one scale down, where the input is the truth."""
    import math

    from tuner.images import downscale, luminance, reference_upscale
    from tuner.texture import hf, mid

    y = luminance(it.image.rgb)
    e2, e3 = (float(np.mean(mid(y, s)[an.skin_in] ** 2)) + 1e-12 for s in (2, 4))
    h, w = y.shape

    def self_gap(f: int, band) -> float:  # type: ignore[no-untyped-def]
        back = luminance(reference_upscale(downscale(it.image.rgb, (max(h // f, 1), max(w // f, 1))), (h, w)))
        return math.log2((float(np.mean(band(y, f)[an.skin_in] ** 2)) + 1e-12)
                         / (float(np.mean(band(back, f)[an.skin_in] ** 2)) + 1e-12))

    v = M.score(M.Context(pipe.run(it.image, Params()).sr, an), ["crunch", "wax"])
    db_per_octave = 10 * math.log10(2)
    dx, dy = np.abs(np.diff(y, axis=1)), np.abs(np.diff(y, axis=0))
    on_grid = dx[:, 7::8].mean() + dy[7::8, :].mean()
    off_grid = np.delete(dx, np.s_[7::8], axis=1).mean() + np.delete(dy, np.s_[7::8], axis=0).mean()
    return {"s23": math.log2(e2 / e3), "skin_px": math.log2(int(an.skin_in.sum())),
            "block": math.log2((on_grid + 1e-6) / (off_grid + 1e-6)),
            "sr_hf": v["crunch"] / db_per_octave, "sr_mid": -v["wax"] / db_per_octave,
            "self4": self_gap(4, hf), "selfm2": self_gap(2, mid)}


def rank(df: pd.DataFrame, max_side: int) -> None:
    """Every subset of up to four candidate features, least squares, ranked by leave-one-portrait-out
    median |error| on the train split; beside it the validation error (all levels and sizes, and at
    ``max_side`` clean + medium, the default study's set) and the share within 0.5 octave there."""
    import itertools

    names = ["s01", "s12", "s23", "noise", "skin_px", "block", "big", "sr_hf", "sr_mid", "self4", "selfm2"]
    df = df.assign(big=(df.side == df.side.max()).astype(float))  # the dataset's max_side: 1 at the larger
    train, val = df[~df.val], df[df.val]
    study = val[(val.side == max_side) & val.level.isin(["none", "medium"])]

    def design(d: pd.DataFrame, cols: list[str]) -> np.ndarray:
        return np.c_[np.ones(len(d)), d[cols].to_numpy()]

    def coef(d: pd.DataFrame, cols: list[str]) -> np.ndarray:
        return np.linalg.lstsq(design(d, cols), d.gap.to_numpy(), rcond=None)[0]

    def err(d: pd.DataFrame, c: np.ndarray, cols: list[str]) -> np.ndarray:  # clipped, as the predictor
        return np.abs(np.clip(design(d, cols) @ c, *GAP_RANGE) - d.gap.to_numpy())

    out = []
    for k in range(1, 5):
        for cols in map(list, itertools.combinations(names, k)):
            loo = np.concatenate([err(d, coef(train[train.face != f], cols), cols) for f, d in train.groupby("face")])
            c = coef(train, cols)
            e_st = err(study, c, cols)
            out.append((float(np.median(loo)), float(np.median(err(val, c, cols))), float(np.median(e_st)),
                        f"{int(np.sum(e_st <= 0.5))}/{len(study)}", "+".join(cols)))
    out.sort()
    shipped = next(r for r in out if r[4] == "+".join(k for k in GAP_FIT if k != "intercept"))
    print(f"feature subsets by leave-one-portrait-out median |error| on train (of {len(out)}; validation beside it; "
          "every error with the prediction clipped to GAP_RANGE):")
    print(f"  {'loo':>5} {'val':>5} {'val ' + str(max_side) + ' c+m':>11} {'within':>7}  features")
    best_val = min(out, key=lambda r: r[2])
    for r in dict.fromkeys([*out[:12], best_val, shipped]):  # each once
        tag = "  (shipped)" if r is shipped else "  (best on validation at this size)" if r is best_val else ""
        print(f"  {r[0]:5.2f} {r[1]:5.2f} {r[2]:11.2f} {r[3]:>7}  {r[4]}{tag}")
    print("  the shipped three plus one more:")
    by_name = {r[4]: r for r in out}
    for extra in (n for n in names if n not in shipped[4].split("+")):
        r = by_name["+".join(n for n in names if n in shipped[4].split("+") or n == extra)]
        print(f"  {r[0]:5.2f} {r[1]:5.2f} {r[2]:11.2f} {r[3]:>7}  {r[4]}")
    print(f"  subsets under 0.3 octave leave-one-out: {sum(r[0] < 0.3 for r in out)}; better than the shipped three "
          f"on validation at {max_side} px (clean + medium): {sum(r[2] < shipped[2] for r in out)}")

if __name__ == "__main__":
    main()
