"""Identity of the metric code, for cache keys: a stale metric value must never be served.

``METRICS_VERSION`` is bumped by hand whenever a metric's meaning changes in a way the
digest below cannot see.  ``code_digest`` hashes every source and data file the metrics
read (the whole ``tuner/metrics`` package with its model files, and the modules they take
face geometry, luminance and the reference upscale from), plus the source of each named
metric function as registered in the table, so editing any metric code, a shared helper
or a model file is a cache miss even when nobody remembered to bump the version.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable, Iterable
from pathlib import Path

METRICS_VERSION = "4"  # 3: gated skin metrics take the worst judged face; 4: paste_halo the worst pasted face

_PKG = Path(__file__).resolve().parent
# modules outside tuner/metrics whose code the metrics run (facegeom: skin mask and face boxes;
# images: luminance and the reference upscale R)
_SHARED = ("facegeom.py", "images.py", "texture.py")


def metric_files() -> list[Path]:
    """Every file whose content can change a metric value, in a stable order."""
    files = sorted(p for p in _PKG.rglob("*") if p.is_file() and p.suffix in (".py", ".npz"))
    return files + [_PKG.parent / name for name in _SHARED if (_PKG.parent / name).is_file()]


def files_digest(files: Iterable[Path], root: Path) -> str:
    """sha256 over (relative name, content) of ``files``."""
    h = hashlib.sha256(METRICS_VERSION.encode())
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _package_digest() -> str:
    return files_digest(metric_files(), _PKG.parent)


def _source(fn: Callable[..., object]) -> str:
    fn = getattr(fn, "func", fn)  # functools.partial (pyiqa rows)
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):  # no source (frozen build): fall back to the qualified name
        return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _sort_key(fn: Callable[..., object]) -> tuple[str, str, str]:
    base = getattr(fn, "func", fn)
    return (getattr(base, "__module__", ""), getattr(base, "__qualname__", ""), repr(getattr(fn, "args", ())))


def code_digest(names: Iterable[str]) -> str:
    """sha256 over the metric files and the registered functions of ``names`` (order-independent)."""
    from . import get

    return _functions_digest(tuple(sorted({get(n).fn for n in names}, key=_sort_key)))


@functools.lru_cache(maxsize=64)
def _functions_digest(fns: tuple[Callable[..., object], ...]) -> str:
    # keyed on the function objects themselves: a metric replaced in the table is a new key
    h = hashlib.sha256(_package_digest().encode())
    for fn in fns:
        h.update(_source(fn).encode())
    return h.hexdigest()
