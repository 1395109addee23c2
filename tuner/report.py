"""Quality reports: one self-contained HTML file (images embedded), readable offline.

- :func:`compare_report`: verdict first (the worst three images of each failing check, with
  their crops), the summary, per-metric paired harm plots, a sortable per-image table, and
  crop boards at 100 % -- face and cheek, input upscaled classically | baseline | candidate,
  with the candidate's skin-texture heat-map -- worst images first;
- :func:`evaluate_report`: the same tables and distributions for a ``tuner evaluate`` folder;
- :mod:`tuner.study_report` builds a study's report on the same page helpers.

Plots are matplotlib (Agg), tables pandas.  The page carries a small script that sorts
tables and records its own health (script errors, images that failed to decode) in
``#selfcheck``, which the browser test reads.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError
from .facegeom import Face, cheek_crop, faces_from_array, skin_mask, window
from .files import atomic_write_bytes
from .images import decode, luminance, reference_upscale

CROP = 192  # px of a face crop at 100 % (output pixels, no resampling)
CHEEK = 96  # px of a cheek crop

_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1280px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
.verdict{padding:12px 16px;border-radius:6px;font-size:16px}.pass{background:#e6f4ea}.fail{background:#fce8e6}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}
th{background:#f5f5f5;cursor:pointer}td:first-child,th:first-child{text-align:left}
img{image-rendering:pixelated;max-width:100%}.board{margin:8px 0 20px}.small{color:#666;font-size:12px}"""

_JS = """<script>
window.__errors=[];window.addEventListener('error',e=>window.__errors.push(String(e.message||e)));
function sortTable(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),
 rows=[...t.tBodies[0].rows],asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
 const v=r=>{const s=r.cells[i].innerText,n=parseFloat(s);return isNaN(n)?s:n};
 rows.sort((a,b)=>{const x=v(a),y=v(b);return (x>y?1:x<y?-1:0)*(asc?1:-1)});rows.forEach(r=>t.tBodies[0].appendChild(r))}
document.querySelectorAll('th').forEach(th=>th.addEventListener('click',()=>sortTable(th)));
window.addEventListener('load',()=>{const imgs=[...document.images],bad=imgs.filter(i=>!i.complete||i.naturalWidth===0);
 const s=document.getElementById('selfcheck');s.dataset.images=imgs.length;s.dataset.broken=bad.length;
 s.dataset.errors=window.__errors.length;s.dataset.done='1';s.textContent='images '+imgs.length+', broken '+bad.length+
 ', script errors '+window.__errors.length})
</script>"""


# ---------------------------------------------------------------- page helpers
def png(rgb: np.ndarray) -> str:
    """An <img> of an RGB float/uint8 array, embedded as a PNG data URI."""
    import cv2

    a = np.asarray(rgb)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(a, cv2.COLOR_RGB2BGR) if a.ndim == 3 else a)
    if not ok:
        raise ConfigError("report: a crop could not be encoded as PNG")
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.tobytes()).decode()}">'


def figure(fig: Any) -> str:
    """An <img> of a matplotlib figure (closed afterwards)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def table(df: pd.DataFrame) -> str:
    """A sortable HTML table (click a header)."""
    return df.to_html(index=False, escape=True, na_rep="-", float_format=lambda v: f"{v:.4g}", border=0)


def page(title: str, sections: Iterable[str], path: Path) -> Path:
    body = "\n".join(sections)
    doc = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n"
           f'<p class=small id=selfcheck data-done="0"></p>{_JS}</body></html>')
    atomic_write_bytes(path, doc.encode())
    return path


def subplots(n: int, height: float, *, width: float = 2.6) -> tuple[Any, Any]:
    """A row of ``n`` matplotlib axes (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(min(width * n, 16.0), height), squeeze=False)
    return fig, axes


# ---------------------------------------------------------------- crops
def face_crop(img: np.ndarray, face_out: Face, size: int = CROP) -> tuple[slice, slice]:
    """A ``size`` square at 100 % centred on the face (output px), clipped to the image."""
    cx, cy = (face_out.box[0] + face_out.box[2]) / 2, (face_out.box[1] + face_out.box[3]) / 2
    return window(img.shape[:2], cy, cx, size)


def heat(tex: np.ndarray, target: float) -> np.ndarray:
    """RGB heat-map of a texture map (dB): red = above ``target``, blue = below, grey = not skin.
    Colour scale +-10 dB around the target."""
    import matplotlib

    rgba = matplotlib.colormaps["RdBu_r"](np.clip((np.nan_to_num(tex, nan=target) - target + 10) / 20, 0, 1))
    out = rgba[..., :3].astype(np.float32)
    out[np.isnan(tex)] = 0.85
    return out


def board(label: str, inp: np.ndarray, sides: Mapping[str, np.ndarray], faces: list[Face], target: float) -> str:
    """Face and cheek crops at 100 %: R (the input, Lanczos-upscaled) | each side | the last side's
    texture heat-map.  ``faces`` in input px."""
    from .metrics.skin import texture_map

    outs = list(sides.values())
    hw = outs[0].shape[:2]
    scale = hw[1] / inp.shape[1]
    ref = reference_upscale(inp, hw)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["input (Lanczos)", *sides])
    if not faces:  # whole-image metrics still apply: show the centre at 100 %
        centre = window(hw, hw[0] / 2, hw[1] / 2, CROP)
        row = "".join(f"<td>{png(c)}</td>" for c in [ref[centre], *[o[centre] for o in outs]])
        return (f"<div class=board><b>{html.escape(label)}</b> (no face detected: the centre)<table><tr>{head}</tr>"
                f"<tr>{row}</tr></table></div>")
    fo = faces[0].scaled(scale)
    mask = skin_mask(ref, [f.scaled(scale) for f in faces])
    y_out, y_ref = luminance(outs[-1]), luminance(ref)
    tex, pores = texture_map(y_out, y_ref, mask, scale), texture_map(y_out, y_ref, mask, scale, band="pores")
    cells = []
    for crop in (face_crop(ref, fo), cheek_crop(mask)):
        if crop is None:
            continue
        panels = [ref[crop], *[o[crop] for o in outs], heat(tex[crop], target), heat(pores[crop], 0.0)]
        cells.append("".join(f"<td>{png(c)}</td>" for c in panels))
    last = html.escape(list(sides)[-1])
    head += (f"<th>crunch band, {last} (red: above natural skin)</th>"
             f"<th>pore band, {last} (blue: smoother than Lanczos = wax)</th>")
    return (f"<div class=board><b>{html.escape(label)}</b><table><tr>{head}</tr>"
            + "".join(f"<tr>{c}</tr>" for c in cells) + "</table></div>")


# ---------------------------------------------------------------- compare
def _inputs(result: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The compared inputs, at the analysis size the comparison used (name -> RGB)."""
    from .dataset import Pairs, load

    ds = result["dataset"]
    loaded = load(ds["root"], max_side=ds["max_side"], on_error="skip",
                  pairs=None if ds.get("pairs") is None else Pairs(**ds["pairs"]))
    if loaded.content_hash != ds["content_hash"]:
        raise ConfigError(f"the images in {ds['root']} changed since the comparison: its crops cannot be shown")
    return {it.name: it.image.rgb for it in loaded.items}


def compare_report(result: Mapping[str, Any], folder: Path, path: Path, *, boards: int = 8) -> Path:
    """The HTML report of a ``compare.json`` mapping whose outputs are under ``folder``."""
    images = result["images"]
    order = _worst_first(result)
    inputs = _inputs(result)
    target = next((r["target"] for r in result["rules"]["metrics"] if r["metric"] == "crunch"
                   and r["target"] is not None), 8.0)

    def crops(name: str) -> str:
        img = next(i for i in images if i["image"] == name)
        sides = {s: decode(folder / s / f"{name}.png").rgb for s in ("baseline", "candidate")}
        faces = faces_from_array(np.asarray(img["faces"]).reshape(-1, 15))
        return board(name, inputs[name], sides, faces, target)

    verdict = result["verdict"]
    lines = [f"<div class='verdict {verdict}'><b>{verdict.upper()}</b>: candidate <i>{html.escape(result['candidate']['source'])}</i> "
             f"against baseline <i>{html.escape(result['baseline']['source'])}</i> on {result['dataset']['n_paired']} "
             f"image(s) of {html.escape(str(result['dataset']['root']))}.</div>"]
    if result.get("candidate_failed_on"):
        lines.append(f"<h3>the candidate failed to run on {html.escape(', '.join(result['candidate_failed_on']))}</h3>"
                     + "".join(f"<p class=small>{html.escape(n)}: {html.escape(why)}</p>"
                               for n, why in result["failures"]["candidate"].items()))
    for check in [c for c in result["failed"] if c != "runs"]:
        worst = _worst_images(result, check)[:3]
        lines.append(f"<h3>{html.escape(check)} fails; worst images: {html.escape(', '.join(worst))}</h3>"
                     + "".join(crops(n) for n in worst if n in inputs))
    rows = []
    for m, s in result["metrics"].items():
        rows.append({"metric": m, "direction": s["direction"], "median harm": s["median_harm"],
                     "CI low": s["ci95"][0], "CI high": s["ci95"][1], "p(worse)": s["p_worse"],
                     "tolerance": s["tolerance"], "verdict": s["verdict"]})
    gates = [{"gate": g, "holds": r["holds"], "images checked": r["images_checked"],
              "failing": ", ".join(f"{f['image']} ({'no value' if f['candidate'] is None else format(f['candidate'], '.3g')})"
                                   for f in r["failing"][:5])}
             for g, r in result["gates"].items()]
    reused = result["reused"]
    sections = [*lines, "<h2>Summary</h2>", table(pd.DataFrame(rows)), "<h2>Per-image gates</h2>",
                table(pd.DataFrame(gates)),
                f"<p class=small>Harm: the candidate minus the baseline, positive = worse (with a target: the growth "
                f"of the distance from it). Stage cache reuse of {reused['of']} images: baseline {reused['baseline']}, "
                f"candidate {reused['candidate']}.</p>",
                "<h2>Paired harm per image</h2>", _harm_plot(result),
                "<h2>Per image (click a header to sort)</h2>", table(_image_table(result, order)),
                "<h2>Crops at 100 %, worst images first</h2>",
                *[crops(n) for n in order[:boards] if n in inputs]]
    return page(f"tuner compare: {verdict}", sections, path)


def _worst_images(result: Mapping[str, Any], check: str) -> list[str]:
    if check.startswith("gate:"):
        return [f["image"] for f in result["gates"][check[5:]]["failing"]]
    vals = [(i["harm"].get(check), i["image"]) for i in result["images"]]
    return [n for v, n in sorted(((v, n) for v, n in vals if v is not None), reverse=True)]


def _worst_first(result: Mapping[str, Any]) -> list[str]:
    """Images by the sum of their harms scaled by each metric's tolerance (worst first); images
    failing a gate come before all others."""
    gate_fail = {f["image"] for r in result["gates"].values() for f in r["failing"]}
    tol = {r["metric"]: max(r["tolerance"], 1e-6) for r in result["rules"]["metrics"]}
    score = {i["image"]: sum((v or 0.0) / tol[m] for m, v in i["harm"].items()) for i in result["images"]}
    return sorted(score, key=lambda n: (n not in gate_fail, -score[n]))


def _image_table(result: Mapping[str, Any], order: list[str]) -> pd.DataFrame:
    by = {i["image"]: i for i in result["images"]}
    rows = []
    for n in order:
        i = by[n]
        row: dict[str, Any] = {"image": n}
        for m in i["candidate"]:
            row[f"{m} base"], row[f"{m} cand"] = i["baseline"].get(m), i["candidate"].get(m)
        rows.append(row)
    return pd.DataFrame(rows)


def _harm_plot(result: Mapping[str, Any]) -> str:
    metrics = list(result["metrics"])
    fig, axes = subplots(len(metrics), 2.8)
    for ax, m in zip(axes[0], metrics, strict=True):
        v = [i["harm"][m] for i in result["images"] if i["harm"][m] is not None]
        ax.axhline(0, color="#888", lw=0.8)
        ax.axhline(result["metrics"][m]["tolerance"], color="#c33", lw=0.8, ls="--")
        ax.plot(np.zeros(len(v)) + np.linspace(-0.2, 0.2, len(v)), v, "o", ms=4, alpha=0.7)
        ax.set_title(f"{m}\n{result['metrics'][m]['verdict']}", fontsize=9)
        ax.set_xticks([])
    fig.tight_layout()
    return figure(fig)


# ---------------------------------------------------------------- evaluate
def evaluate_report(folder: Path, path: Path) -> Path:
    """The report of a ``tuner evaluate`` folder (metrics.csv, summary.csv, images/ when saved)."""
    csv = folder / "metrics.csv"
    if not csv.is_file():
        raise ConfigError(f"{folder} has neither compare.json nor metrics.csv (a compare or evaluate result)")
    df = pd.read_csv(csv)
    num = [c for c in df.columns if c not in ("image", "file", "notes") and pd.api.types.is_numeric_dtype(df[c])]
    sections = [f"<div class='verdict pass'>{len(df)} image(s) scored; metrics: {html.escape(', '.join(num))}</div>"]
    summary = folder / "summary.csv"
    if summary.is_file():
        sections += ["<h2>Summary</h2>", table(pd.read_csv(summary))]
    if num:
        fig, axes = subplots(len(num), 2.4)
        for ax, m in zip(axes[0], num, strict=True):
            ax.hist(df[m].dropna(), bins=12)
            ax.set_title(m, fontsize=9)
        fig.tight_layout()
        sections += ["<h2>Distributions</h2>", figure(fig)]
    sections += ["<h2>Per image (click a header to sort)</h2>", table(df)]
    return page(f"tuner evaluate: {folder.name}", sections, path)
