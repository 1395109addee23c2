"""One table of metrics, in the style of pyiqa's: name, direction, range, needs, cost, availability.

Directions: ``lower_better`` True/False, or None for informational metrics that no
objective should push either way.  Needs: ``input`` (the LR input), ``reference`` (R, a
Lanczos upscale of it), ``faces``, ``tile_grid``, ``paste_mask``.  Cost classes, measured
on a 1024^2 output on a 2-core CPU (benchmarks/bench_metrics.py): cheap < 0.1 s,
moderate < 1 s, expensive >= 1 s.  Learned pyiqa metrics are marked expensive without a
measurement here (their weights cannot be had offline).

Any pyiqa no-reference metric can be named too (``musiq``, ``clipiqa``, ``topiq_nr``, ...),
with pyiqa's own ``lower_better``; learned ones need their weights (downloaded on first use).
pyiqa is imported only for such names (and by ``table()``, which lists them): ``get()`` and
``score()`` of the built-in rows never import it.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import MetricError
from . import artifacts, identity, iqa, skin, truth
from .context import Context, InputAnalysis

log = logging.getLogger(__name__)

__all__ = ["Context", "InputAnalysis", "MetricInfo", "LEAST", "WORST_FACE", "least_siblings", "get", "score", "table", "names", "check_available"]


@dataclass(frozen=True)
class MetricInfo:
    name: str
    fn: Callable[[Context], float]
    lower_better: bool | None
    range: str
    needs: tuple[str, ...]
    cost: str
    group: str

    @property
    def direction(self) -> str:
        return {True: "lower", False: "higher", None: "info"}[self.lower_better]

    @property
    def description(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0]


_ROWS = [
    # NR-IQA built-ins: numpy ports of the MATLAB references (LIVE releases; MATLAB piqe), no pyiqa
    MetricInfo("niqe", iqa.niqe, True, "~2, ~20", (), "moderate", "iqa"),
    MetricInfo("brisque", iqa.brisque, True, "~0, ~100", (), "moderate", "iqa"),
    MetricInfo("piqe", iqa.piqe, True, "0, 100", (), "cheap", "iqa"),
    MetricInfo("crunch", skin.crunch, True, "dB, ~-10, ~+20", ("reference", "faces"), "cheap", "skin"),
    MetricInfo("crunch_least", skin.crunch_least, None, "dB, ~-10, ~+20", ("reference", "faces"), "cheap", "skin"),
    MetricInfo("texture_excess", skin.texture_excess, None, "octaves, ~-6, ~+4 (0 = a real photo's, predicted)",
               ("reference", "faces"), "cheap", "skin"),
    MetricInfo("texture_excess_least", skin.texture_excess_least, None, "octaves, ~-6, ~+4",
               ("reference", "faces"), "cheap", "skin"),
    MetricInfo("crunch_grad", skin.crunch_grad, True, "dB, ~-10, ~+20", ("reference", "faces"), "cheap", "skin"),
    MetricInfo("wax", skin.wax, True, "dB, ~-10, ~+20", ("reference", "faces"), "cheap", "skin"),
    MetricInfo("wax_lbp", skin.wax_lbp, True, "bits, -3.3, 3.3", ("reference", "faces"), "cheap", "skin"),
    MetricInfo("spectral_slope", skin.spectral_slope, None, "~-4, 0", ("faces",), "cheap", "skin"),
    MetricInfo("seam", artifacts.seam, True, "1 (seamless), ~5", ("tile_grid",), "cheap", "artifacts"),
    MetricInfo("paste_halo", artifacts.paste_halo, True, "1 (invisible), ~5", ("reference", "paste_mask"), "cheap",
               "artifacts"),
    MetricInfo("edge_halo", artifacts.edge_halo, True, "0, ~1", ("reference",), "cheap", "artifacts"),
    MetricInfo("delta_e", artifacts.delta_e, True, "0, 100", ("input",), "cheap", "fidelity"),
    MetricInfo("delta_e_skin", artifacts.delta_e_skin, True, "0, 100", ("input", "faces"), "cheap", "fidelity"),
    MetricInfo("lr_psnr", artifacts.lr_psnr, False, "dB, ~20, 99", ("input",), "cheap", "fidelity"),
    MetricInfo("lr_ssim", artifacts.lr_ssim, False, "0, 1", ("input",), "cheap", "fidelity"),
    MetricInfo("identity", identity.identity, True, "0, ~1.2 (>0.6 = other person)", ("input", "faces"), "moderate",
               "identity"),
    # full-reference: against the ground truth of LR/HR pairs (NaN on real inputs)
    MetricInfo("texture_hr", truth.texture_hr, None, "octaves, ~-6, ~+3 (0 = the truth)", ("truth", "faces"), "cheap",
               "truth"),
    MetricInfo("texture_hr_least", truth.texture_hr_least, None, "octaves, ~-6, ~+3 (0 = the truth)",
               ("truth", "faces"), "cheap", "truth"),
    MetricInfo("pores_hr", truth.pores_hr, None, "octaves, ~-6, ~+3 (0 = the truth)", ("truth", "faces"), "cheap",
               "truth"),
    MetricInfo("lbp_hr", truth.lbp_hr, True, "0, 1", ("truth", "faces"), "cheap", "truth"),
    MetricInfo("ssim_hr", truth.ssim_hr, False, "0, 1", ("truth",), "cheap", "truth"),
    MetricInfo("haarpsi_hr", truth.haarpsi_hr, False, "0, 1", ("truth",), "moderate", "truth"),
]
TABLE: dict[str, MetricInfo] = {m.name: m for m in _ROWS}
# A per-face metric whose value is its highest face's, and the sibling with its lowest face's: a term with a
# target reads both (tuner.objective.distance), so a face on either side of the target costs
LEAST = {"crunch": "crunch_least", "texture_hr": "texture_hr_least", "texture_excess": "texture_excess_least"}


def least_siblings(names: Iterable[str]) -> list[str]:
    """The :data:`LEAST` siblings of ``names`` (those that have one): what a two-sided reading of them needs."""
    return [LEAST[n] for n in names if n in LEAST]


# Every metric whose value on an image with several faces is its worst face's (the guard rails' reading)
WORST_FACE = ("wax", "delta_e_skin", "identity", *LEAST)

# pyiqa NR metrics listed by `tuner metrics`; any other pyiqa NR name works too
PYIQA_LISTED = ("musiq", "clipiqa", "topiq_nr", "topiq_nr-face", "maniqa", "liqe", "hyperiqa", "dbcnn")


@functools.lru_cache(maxsize=1)
def _pyiqa_nr() -> dict[str, dict]:
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    return {k: v for k, v in DEFAULT_CONFIGS.items() if v.get("metric_mode") == "NR"}


def _pyiqa_info(name: str) -> MetricInfo:
    conf = _pyiqa_nr()[name]
    return MetricInfo(name, functools.partial(iqa.pyiqa_score, name), bool(conf.get("lower_better", False)),
                      str(conf.get("score_range", "?")), (), "expensive", "pyiqa")


def names() -> list[str]:
    return list(TABLE)


def get(name: str) -> MetricInfo:
    """The row for ``name``; an unknown name raises MetricError suggesting close names."""
    if name in TABLE:
        return TABLE[name]
    bare = name.removeprefix("pyiqa:")
    try:
        nr = _pyiqa_nr()
    except ImportError:
        nr = {}
    if bare in nr:
        return _pyiqa_info(bare)
    close = difflib.get_close_matches(name, list(TABLE) + list(nr), n=3)
    hint = "" if nr else " (pyiqa's metrics need the optional extra: pip install 'tuner[pyiqa]')"
    raise MetricError(f"unknown metric {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
                      + " (`tuner metrics` lists them)" + hint)


def check_available(name: str, *, probe: bool = False) -> tuple[bool, str]:
    """(available here, why not).

    Learned pyiqa metrics count as available when a weights file named after them is in
    pyiqa's cache; ``probe=True`` instead creates the metric (which may try a download).
    """
    info = get(name)
    if info.group == "pyiqa":
        if probe:
            try:
                iqa.pyiqa_metric(info.name)
            except MetricError as e:
                return False, str(e).split(". Learned")[0]
        else:
            cache = iqa.pyiqa_cache_dir()
            stem = info.name.split("-")[0].split("_")[0].lower()
            if not (cache.is_dir() and any(p.name.lower().startswith(stem) for p in cache.iterdir())):
                return False, f"weights not in {cache} (downloaded on first use where internet is reachable)"
    if name == "identity":
        try:
            identity._models()
        except MetricError as e:
            return False, str(e)
    return True, ""


def score(ctx: Context, metric_names: Iterable[str]) -> dict[str, float]:
    """Compute each named metric on ``ctx``; NaN (with ``ctx.notes[name]``) where it does not apply."""
    out: dict[str, float] = {}
    for n in metric_names:
        v = float(get(n).fn(ctx))
        out[n] = v
        if math.isnan(v) and n not in ctx.notes:
            ctx.notes[n] = "not applicable"
    return out


def table(cfg_metrics: Iterable[str] = ()) -> list[dict[str, str]]:
    rows = []
    for n in [*TABLE, *PYIQA_LISTED, *[m for m in cfg_metrics if m not in TABLE]]:
        try:
            info = get(n)
        except MetricError:
            continue
        ok, why = check_available(n)
        rows.append({"name": n, "direction": info.direction, "range": info.range,
                     "needs": ",".join(info.needs) or "-", "cost": info.cost,
                     "available": "yes" if ok else f"no: {why}", "description": info.description})
    return rows
