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


_REPORTED: set[Path] = set()  # folders whose left-out entries this process has logged (train and validation list one twice)


def list_images(folder: Path) -> list[Path]:
    """Files in ``folder`` (not recursive) with a supported suffix, sorted by name (hidden ones too).
    The images in other formats (:data:`OTHER_IMAGES`) and the subfolders it leaves out are logged,
    once per folder (hidden ones aside), so a folder of HEIC photos or of subfolders does not look
    like an empty one."""
    images, other, subfolders = [], collections.Counter[str](), 0
    for q in folder.iterdir():
        suffix, shown = q.suffix.lower(), not q.name.startswith(".")
        if q.is_file():
            if suffix in SUPPORTED_SUFFIXES:
                images.append(q)
            elif shown and suffix in OTHER_IMAGES:
                other[suffix] += 1
        elif shown and q.is_dir():
            subfolders += 1
    if (other or subfolders) and folder.resolve() not in _REPORTED:
        _REPORTED.add(folder.resolve())
        log.warning("%s: left out %s (tuner reads %s; subfolders are not searched)", folder,
                    ", ".join([*(f"{n} {s} file(s)" for s, n in sorted(other.items())),
                               *([f"{subfolders} subfolder(s)"] if subfolders else [])]),
                    " ".join(SUPPORTED_SUFFIXES))
    return sorted(images)


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
