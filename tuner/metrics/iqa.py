"""No-reference IQA: offline built-ins (NIQE, BRISQUE, PIQE) and any pyiqa NR metric by name.

The built-ins reproduce the MATLAB reference implementations in numpy/scipy (nr_niqe.py,
nr_brisque.py, nr_piqe.py; models in data/) and never import pyiqa or torch.  All score ``Context.iqa_image``: the output resized (INTER_AREA) so its long side is at
most ``iqa_max_side`` (default 1024), the same for every trial of a study.

Caution (see README): NIQE and BRISQUE correlate *negatively* with human realness on
restored faces, and maximising any NR score rewards over-sharpening.  tuner never
optimises them without the crunch/wax guard rails.

pyiqa is licensed for non-commercial use only (PolyForm Noncommercial 1.0.0).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MetricError
from . import nr_brisque, nr_niqe, nr_piqe
from .context import MODEL_LOAD_LOCK, Context
from .nss import rgb2gray


def _not_applicable(ctx: Context, name: str, fn: Callable[[], float]) -> float:
    """``fn()``, or NaN with ``ctx.notes[name]`` when the image gives the metric nothing to measure
    (too small, flat): a broken output must not abort a study, and the note says why."""
    try:
        return fn()
    except MetricError as e:
        ctx.notes[name] = str(e)
        return math.nan


def _gray(ctx: Context) -> np.ndarray:
    """MATLAB ``double(rgb2gray(uint8(iqa_image)))``, shared by NIQE and BRISQUE."""
    g = ctx.extras.get("iqa_gray")
    if g is None:
        g = ctx.extras["iqa_gray"] = rgb2gray(ctx.iqa_image)
    return g


def niqe(ctx: Context) -> float:
    """NIQE (lower better, ~3 pristine to 10+): LIVE's MATLAB release (niqe_release) and its pristine model.

    Reference: the authors' MATLAB code, which pyiqa names ``niqe``; within 0.6 % of its values
    in pyiqa's ResultsCalibra table (tests/test_iqa.py).  Input: MATLAB ``rgb2gray`` of the
    8-bit image, cropped to whole 96 px blocks.  MATLAB IPT's ``niqe()`` (pyiqa ``niqe_matlab``)
    has another model and gives other numbers.
    """
    return _not_applicable(ctx, "niqe", lambda: nr_niqe.niqe(_gray(ctx)))


def brisque(ctx: Context) -> float:
    """BRISQUE (lower better, ~0-100): LIVE's MATLAB release (BRISQUE_release) and its LIVE-trained SVR.

    Reference: the authors' MATLAB code + libsvm, which pyiqa names ``brisque``; within 3 % or
    0.6 points of its values in pyiqa's ResultsCalibra table (tests/test_iqa.py).  Input:
    MATLAB ``rgb2gray`` of the 8-bit image.  MATLAB IPT's ``brisque()`` (pyiqa
    ``brisque_matlab``) has another model and gives other numbers.
    """
    return _not_applicable(ctx, "brisque", lambda: nr_brisque.brisque(_gray(ctx)))


def piqe(ctx: Context) -> float:
    """PIQE (lower better, 0-100): MATLAB's piqe(), a clean-room numpy implementation; no weights.

    Reference: MATLAB IPT ``piqe()`` (Venkatanath et al., NCC 2015); equal to MATLAB's values on
    the calibration images to their 2 decimals (tests/test_iqa.py).  Written from the paper,
    MathWorks' documentation and the MIT-licensed ``pypiqe`` (see tuner/metrics/nr_piqe.py),
    not from pyiqa's non-commercial code.
    """
    return _not_applicable(ctx, "piqe", lambda: nr_piqe.piqe(ctx.iqa_image))


def pyiqa_metric(name: str) -> Any:
    """A pyiqa metric object on CPU/GPU, created once (one scoring thread at a time imports and
    builds it); MetricError when it cannot be had here."""
    with MODEL_LOAD_LOCK:
        return _pyiqa_metric(name)


@functools.lru_cache(maxsize=8)
def _pyiqa_metric(name: str) -> Any:
    try:
        import pyiqa
        import torch

        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return pyiqa.create_metric(name, device=dev, as_loss=False)
    except Exception as e:  # pyiqa raises assorted errors for unknown names / failed downloads
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise MetricError(
            f"pyiqa metric '{name}' is not available here: {msg}. Learned pyiqa metrics download their weights on "
            "first use; on a machine without internet access copy them into pyiqa's cache (~/.cache/torch/hub/pyiqa/) "
            "or choose an offline metric (niqe, brisque, piqe)"
        ) from e


def pyiqa_cache_dir() -> Path:
    """Where pyiqa keeps downloaded weights (torch hub dir / pyiqa)."""
    import torch

    return Path(torch.hub.get_dir()) / "pyiqa"


def pyiqa_score(name: str, ctx: Context) -> float:
    import torch

    m = pyiqa_metric(name)
    t = torch.from_numpy(np.ascontiguousarray(ctx.iqa_image.transpose(2, 0, 1)))[None].float()
    with torch.inference_mode():
        return float(m(t.to(m.device)).item())


