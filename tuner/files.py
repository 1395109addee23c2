"""Files on disk: the input folders tuner reads and the atomic writes of everything it writes."""

from __future__ import annotations

import collections
import functools
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
# image formats a photo folder may hold that tuner does not read: said when left out (a CSV or a README is not)
OTHER_IMAGES = (".heic", ".heif", ".avif", ".jxl", ".jp2", ".gif", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf",
                ".orf", ".rw2", ".psd", ".exr", ".hdr", ".ico", ".svg", ".pnm", ".ppm", ".pgm")


def list_images(folder: Path) -> list[Path]:
    """Files in ``folder`` (not recursive) with a supported suffix, sorted by name (hidden ones too).
    The images in other formats (:data:`OTHER_IMAGES`) and the subfolders it leaves out are logged
    (hidden ones aside), so a folder of HEIC photos or of subfolders does not look like an empty one."""
    entries = list(folder.iterdir())
    images = sorted(q for q in entries if q.is_file() and q.suffix.lower() in SUPPORTED_SUFFIXES)
    shown = [q for q in entries if not q.name.startswith(".")]  # hidden ones are read if images, not reported if not
    other = collections.Counter(q.suffix.lower() for q in shown if q.is_file() and q.suffix.lower() in OTHER_IMAGES)
    subfolders = sum(q.is_dir() for q in shown)
    if other or subfolders:
        log.warning("%s: left out %s (tuner reads %s; subfolders are not searched)", folder,
                    ", ".join([*(f"{n} {s} file(s)" for s, n in sorted(other.items())),
                               *([f"{subfolders} subfolder(s)"] if subfolders else [])]),
                    " ".join(SUPPORTED_SUFFIXES))
    return images


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process umask, read once: reading it means setting it, which other threads would see."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and ``os.replace``: never a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
