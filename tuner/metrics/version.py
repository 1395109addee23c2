"""Identity of the metric code, for cache keys: a stale metric value must never be served.

``METRICS_VERSION`` is bumped by hand whenever a metric's meaning changes in a way the
code digest below cannot see (a shared helper outside ``tuner/metrics``, a parameter file).
``code_digest`` hashes the source of every module that defines one of the named metrics,
plus the shared context and the skin mask, so editing a metric's code is a cache miss
even when nobody remembered to bump the version.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable, Iterable

METRICS_VERSION = "2"


def _source(fn: Callable[..., object]) -> str:
    fn = getattr(fn, "func", fn)  # functools.partial (pyiqa rows)
    mod = inspect.getmodule(fn)
    try:
        return inspect.getsource(fn) + (inspect.getsource(mod) if mod is not None else "")
    except (OSError, TypeError):  # no source (frozen build): fall back to the qualified name
        return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


@functools.lru_cache(maxsize=64)
def _digest(fns: tuple[Callable[..., object], ...]) -> str:
    from ..faces import skin_mask
    from . import context

    h = hashlib.sha256(METRICS_VERSION.encode())
    for fn in (*fns, context.InputAnalysis, skin_mask):
        h.update(_source(fn).encode())
    return h.hexdigest()


def code_digest(names: Iterable[str]) -> str:
    """sha256 over METRICS_VERSION and the source of the named metrics (order-independent)."""
    from . import get

    fns = tuple(sorted({get(n).fn for n in names}, key=_sort_key))
    return _digest(fns)


def _sort_key(fn: Callable[..., object]) -> tuple[str, str, str]:
    base = getattr(fn, "func", fn)
    return (getattr(base, "__module__", ""), getattr(base, "__qualname__", ""), repr(getattr(fn, "args", ())))
