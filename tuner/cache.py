"""Content-addressed on-disk cache of stage outputs (arrays only, never pickles).

A key (:func:`tuner.hashing.make_key`) is the sha256 of a canonical JSON of everything that determines the output:
input content hash, model content hash(es), stage parameters and PIPELINE_VERSION.
Writes are atomic (temporary file + ``os.replace``), so a crash never leaves a half
entry; a size limit evicts least-recently-used entries.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .images import atomic_write_bytes

log = logging.getLogger(__name__)


class StageCache:
    """``get``/``put`` of named arrays under a key; ``max_bytes`` bounds the folder size."""

    def __init__(self, root: str | Path, *, max_bytes: int = 20 * 2**30) -> None:
        self.root = Path(root).expanduser()
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0
        self._total: int | None = None  # bytes on disk, scanned once, then kept up to date
        self._lock = threading.Lock()

    def _path(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:2] / f"{key}.npz"

    def get(self, stage: str, key: str) -> dict[str, np.ndarray] | None:
        p = self._path(stage, key)
        try:
            with np.load(p, allow_pickle=False) as z:
                out = {k: z[k] for k in z.files}
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError) as e:  # a corrupt entry is a miss, and is removed
            log.warning("stage cache: dropping unreadable entry %s (%s)", p, e)
            p.unlink(missing_ok=True)
            self.misses += 1
            return None
        with contextlib.suppress(FileNotFoundError):  # evicted meanwhile (another thread or process)
            os.utime(p)  # LRU clock
        self.hits += 1
        return out

    def put(self, stage: str, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        path = self._path(stage, key)
        with self._lock:  # scoring threads write metric entries at once
            try:
                old = path.stat().st_size
            except FileNotFoundError:
                old = 0
            atomic_write_bytes(path, buf.getvalue())
            if self._total is None:
                self._total = self.size_bytes()
            else:
                self._total += len(buf.getvalue()) - old
            if self._total > self.max_bytes:
                self._evict()

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*.npz")) if self.root.exists() else 0

    def _evict(self) -> None:
        """Delete least-recently-used entries until the folder fits ``max_bytes`` (rescans: other
        processes may share the folder)."""
        files = []
        for p in self.root.rglob("*.npz"):
            try:
                st = p.stat()
            except FileNotFoundError:  # removed by another process meanwhile
                continue
            files.append((st.st_mtime, st.st_size, p))
        total = sum(s for _, s, _ in files)
        for _, s, p in sorted(files):
            if total <= self.max_bytes:
                break
            p.unlink(missing_ok=True)
            total -= s
        self._total = total
