"""Portrait sets: load a folder once at an analysis size, with content hashes and bad-image reports."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, ImageError
from .hashing import array_hash
from .images import Image, Limits, decode, fit_max_side, list_images
from .paths import bundled_portraits

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Item:
    name: str  # file stem
    path: Path
    image: Image  # at the analysis size
    content_hash: str  # sha256 of the analysis-size pixels


@dataclass(frozen=True)
class Dataset:
    root: Path
    items: list[Item]
    failures: list[tuple[Path, str]]
    max_side: int | None

    @property
    def content_hash(self) -> str:
        """sha256 over (name, pixel hash) of every usable item, in order: identifies the exact set scored."""
        h = hashlib.sha256()
        for it in self.items:
            h.update(f"{it.name}:{it.content_hash}\n".encode())
        h.update(f"max_side={self.max_side}".encode())
        return h.hexdigest()


def load(path: str | Path | None, *, max_side: int | None = None, limit: int | None = None,
         limits: Limits = Limits(), on_error: str = "skip") -> Dataset:
    """Decode every image of a folder (bundled portraits when ``path`` is None).

    Bad images are logged and skipped (``on_error='skip'``) or raise (``'fail'``); a set
    with no usable image is a :class:`ConfigError`.
    """
    if on_error not in ("skip", "fail"):
        raise ConfigError(f"dataset.on_error must be skip or fail, got {on_error!r}")
    if max_side is not None and max_side < limits.min_side:
        raise ConfigError(f"dataset.max_side={max_side} is below limits.min_side={limits.min_side}")
    root = bundled_portraits() if path in (None, "", "null") else Path(str(path)).expanduser()
    if not root.is_dir():
        raise ConfigError(f"dataset.path={root} is not a folder")
    files = list_images(root)
    if limit is not None:
        files = files[: int(limit)]
    items, failures = [], []
    for f in files:
        try:
            img = fit_max_side(decode(f, limits=limits), max_side)
        except ImageError as e:
            if on_error == "fail":
                raise
            log.warning("dataset: skipped %s", e)
            failures.append((f, str(e)))
            continue
        items.append(Item(name=f.stem, path=f, image=img, content_hash=array_hash(img.rgb)))
    if not items:
        raise ConfigError(f"dataset {root} has no usable image ({len(failures)} failed, {len(files)} found)")
    names = [it.name for it in items]
    if len(set(names)) != len(names):
        raise ConfigError(f"dataset {root} has several images with the same stem; outputs would collide")
    return Dataset(root=root, items=items, failures=failures, max_side=max_side)
