"""Content-addressed on-disk cache of stage outputs (arrays only, never pickles).

A key (:func:`tuner.hashing.make_key`) is the sha256 of a canonical JSON of everything that determines the output:
input content hash, model content hash(es), stage parameters and PIPELINE_VERSION.
Writes are atomic (temporary file + ``os.replace``), so a crash never leaves a half
entry; a size limit evicts least-recently-used entries.

Each entry is an ``.npz`` followed by the sha256 of its bytes: an entry damaged on disk (a bad
sector, a bit flip, a truncated copy) fails the checksum, is logged, removed and recomputed.
A cache folder that cannot be written (full, read-only) is a warning, once: the run goes on
uncached.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .files import atomic_write_bytes

log = logging.getLogger(__name__)

FORMAT = "v2"  # entries with a sha256 trailer; v1 entries (plain .npz) under the root are never read
_DIGEST = 32


class StageCache:
    """``get``/``put`` of named arrays under a key; ``max_bytes`` bounds the folder size."""

    def __init__(self, root: str | Path, *, max_bytes: int = 20 * 2**30) -> None:
        self.root = Path(root).expanduser()
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0
        self.corrupt = 0  # entries that failed their checksum (recomputed)
        self.write_error: str | None = None  # set when the folder cannot be written: no more writes
        self._total: int | None = None  # bytes on disk, scanned once, then kept up to date
        self._lock = threading.Lock()

    def _path(self, stage: str, key: str) -> Path:
        return self.root / FORMAT / stage / key[:2] / f"{key}.npz"

    def get(self, stage: str, key: str) -> dict[str, np.ndarray] | None:
        p = self._path(stage, key)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        except OSError as e:
            log.warning("stage cache: cannot read %s (%s); recomputing", p, e)
            self.misses += 1
            return None
        body, digest = data[:-_DIGEST], data[-_DIGEST:]
        try:
            if len(data) <= _DIGEST or hashlib.sha256(body).digest() != digest:
                raise ValueError("checksum mismatch")
            with np.load(io.BytesIO(body), allow_pickle=False) as z:
                out = {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001 - any damage (checksum, zip, npy header) is a miss, logged
            with self._lock:
                self.corrupt += 1
            log.warning("stage cache: corrupt entry %s (%s); removed, recomputing", p, e)
            with contextlib.suppress(OSError):
                p.unlink(missing_ok=True)
            self.misses += 1
            return None
        with contextlib.suppress(OSError):  # evicted meanwhile (another thread or process), or read-only
            os.utime(p)  # LRU clock
        self.hits += 1
        return out

    def put(self, stage: str, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        if self.write_error is not None:
            return
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        body = buf.getvalue()
        data = body + hashlib.sha256(body).digest()
        path = self._path(stage, key)
        with self._lock:  # scoring threads write metric entries at once
            if self.write_error is not None:
                return
            try:
                try:
                    old = path.stat().st_size
                except FileNotFoundError:
                    old = 0
                atomic_write_bytes(path, data)
                if self._total is None:
                    self._total = self.size_bytes()
                else:
                    self._total += len(data) - old
                if self._total > self.max_bytes:
                    self._evict()
            except OSError as e:  # full disk, read-only folder, lost mount: go on without caching
                self.write_error = f"{e.__class__.__name__}: {e}"
                log.warning("stage cache: cannot write to %s (%s); going on uncached (results are the same, "
                            "only slower; free space or set TUNER_CACHE_DIR / cache_dir to a writable folder)",
                            self.root, self.write_error)

    def size_bytes(self) -> int:
        total = 0
        for p in self.root.rglob("*.npz") if self.root.exists() else []:
            with contextlib.suppress(FileNotFoundError):
                total += p.stat().st_size
        return total

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
