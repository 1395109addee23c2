"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = Path(os.environ.get("TUNER_WEIGHTS_DIR") or ROOT.parent / "shared" / "weights")
PORTRAITS = ROOT / "datasets" / "portraits"


def timeit(fn: Callable[[], object], *, repeat: int = 3, warmup: int = 1) -> float:
    """Median wall seconds of ``fn`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def need_weights(*names: str) -> None:
    missing = [n for n in names if not (WEIGHTS / n).is_file()]
    if missing:
        raise SystemExit(f"skipped: weights {missing} not in {WEIGHTS} (set TUNER_WEIGHTS_DIR)")
