"""No-reference IQA: offline built-ins (NIQE, BRISQUE, PIQE) and any pyiqa NR metric by name.

All score ``Context.iqa_image``: the output resized (INTER_AREA) so its long side is at
most ``iqa_max_side`` (default 1024), the same for every trial of a study.

Caution (see README): NIQE and BRISQUE correlate *negatively* with human realness on
restored faces, and maximising any NR score rewards over-sharpening.  tuner never
optimises them without the crunch/wax guard rails.

pyiqa is licensed for non-commercial use only (PolyForm Noncommercial 1.0.0).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MetricError
from .context import Context


def niqe(ctx: Context) -> float:
    """NIQE (lower better, ~2-10): basicsr 1.4.2's MATLAB-faithful implementation with the
    pristine-model parameters it ships (niqe_pris_params.npz); Y channel, 96 px blocks."""
    from ..compat import import_basicsr_stack

    import_basicsr_stack()
    from basicsr.metrics.niqe import calculate_niqe

    bgr255 = ctx.iqa_image[:, :, ::-1] * 255.0
    return float(calculate_niqe(bgr255, crop_border=0, input_order="HWC", convert_to="y"))


@functools.lru_cache(maxsize=1)
def _brisque_model() -> Any:
    from brisque import BRISQUE

    return BRISQUE(url=False)


def brisque(ctx: Context) -> float:
    """BRISQUE (lower better, ~0-100): the `brisque` 0.2.0 package and the SVM model it ships."""
    u8 = (np.clip(ctx.iqa_image, 0, 1) * 255).round().astype(np.uint8)
    return float(_brisque_model().score(u8))


@functools.lru_cache(maxsize=8)
def pyiqa_metric(name: str) -> Any:
    """A pyiqa metric object on CPU/GPU, created once; MetricError when it cannot be had here."""
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


def pyiqa_lower_better(name: str) -> bool:
    return bool(pyiqa_metric(name).lower_better)


def piqe(ctx: Context) -> float:
    """PIQE (lower better, 0-100): pyiqa's implementation, which needs no weights."""
    return pyiqa_score("piqe", ctx)
