"""Portrait sets: load a folder once at an analysis size, with content hashes and bad-image reports."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .degrade import LEVELS, crop_to_scale, in_validation, make_lr
from .errors import ConfigError, ImageError
from .files import list_images
from .hashing import array_hash
from .images import Image, Limits, decode, fit_max_side
from .paths import bundled_portraits

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Item:
    name: str  # file stem
    path: Path
    image: Image  # at the analysis size (with pairs: the LR)
    content_hash: str  # sha256 of the analysis-size pixels (with pairs: of the LR and the HR)
    hr: np.ndarray | None = None  # the ground truth at the output size (pairs only)
    level: str | None = None  # the pair's degradation level (pairs only)


@dataclass(frozen=True)
class Pairs:
    """Make LR/HR pairs of the portraits (:mod:`tuner.degrade`): the HR is the portrait with its long
    side at most ``max_side * scale``, the LR its x``scale`` downscale, clean or degraded."""

    scale: int = 4
    degradation: str | tuple[str, ...] = "none"  # none | light | medium | strong, or several of them
    seed: int = 0
    split: str = "all"  # all | train | val: the fixed split by portrait (tuner.degrade.in_validation)

    def __post_init__(self) -> None:
        if not isinstance(self.degradation, str):  # a list, from the config
            object.__setattr__(self, "degradation", tuple(str(v) for v in self.degradation))
        bad = [lv for lv in self.levels if lv not in LEVELS]
        if bad or not self.levels or len(set(self.levels)) != len(self.levels):
            raise ConfigError(f"dataset.pairs.degradation must be one of {LEVELS} or a list of distinct ones, "
                              f"got {self.degradation!r}")
        if self.split not in ("all", "train", "val"):
            raise ConfigError(f"dataset.pairs.split must be all, train or val, got {self.split!r}")
        if self.scale < 2:
            raise ConfigError(f"dataset.pairs.scale must be >= 2, got {self.scale}")

    @property
    def levels(self) -> tuple[str, ...]:
        return (self.degradation,) if isinstance(self.degradation, str) else tuple(self.degradation)

    def item_name(self, stem: str, level: str) -> str:
        """One level: the portrait's stem; several: ``<stem>@<level>`` (each portrait once per level)."""
        return stem if len(self.levels) == 1 else f"{stem}@{level}"


@dataclass(frozen=True)
class Dataset:
    root: Path
    items: list[Item]
    failures: list[tuple[Path, str]]
    max_side: int | None
    pairs: Pairs | None = None

    @property
    def content_hash(self) -> str:
        """sha256 over (name, pixel hash) of every usable item, in order: identifies the exact set scored."""
        h = hashlib.sha256()
        for it in self.items:
            h.update(f"{it.name}:{it.content_hash}\n".encode())
        h.update(f"max_side={self.max_side}".encode())
        if self.pairs is not None:
            h.update(repr(self.pairs).encode())
        return h.hexdigest()


def load(path: str | Path | None, *, max_side: int | None = None, limit: int | None = None,
         limits: Limits = Limits(), on_error: str = "skip", pairs: Pairs | None = None,
         allow_empty: bool = False) -> Dataset:
    """Decode every image of a folder (bundled portraits when ``path`` is None).

    With ``pairs``, each portrait becomes an LR/HR pair (the LR at most ``max_side``) per
    degradation level, and only the portraits of ``pairs.split`` are kept.

    Bad images are logged and skipped (``on_error='skip'``) or raise (``'fail'``); a set
    with no usable image is a :class:`ConfigError` (``allow_empty``: a warning).
    """
    if on_error not in ("skip", "fail"):
        raise ConfigError(f"dataset.on_error must be skip or fail, got {on_error!r}")
    if max_side is not None and max_side < limits.min_side:
        raise ConfigError(f"dataset.max_side={max_side} is below limits.min_side={limits.min_side}")
    root = bundled_portraits() if path in (None, "", "null") else Path(str(path)).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"dataset.path={root} is not a folder")
    files = list_images(root)
    if limit is not None:
        files = files[: int(limit)]
    if pairs is not None and pairs.split != "all":
        files = [f for f in files if in_validation(f.stem) == (pairs.split == "val")]
    items, failures = [], []
    for f in files:
        try:
            if pairs is None:
                img = fit_max_side(decode(f, limits=limits), max_side, limits, f, "dataset.max_side")
                items.append(Item(name=f.stem, path=f, image=img, content_hash=array_hash(img.rgb)))
            else:
                items.extend(_pairs(f, limits, max_side, pairs))
        except ImageError as e:
            if on_error == "fail":
                raise
            log.warning("dataset: skipped %s", e)
            failures.append((f, str(e)))
            continue
    if not items:
        what = f"dataset {root}{'' if pairs is None else f' (split {pairs.split})'} has no usable image"
        if not allow_empty:
            raise ConfigError(f"{what} ({len(failures)} failed, {len(files)} found)")
        log.warning("%s: nothing to score there", what)
    names = [it.name for it in items]
    if len(set(names)) != len(names):
        raise ConfigError(f"dataset {root} has several images with the same stem; outputs would collide")
    return Dataset(root=root, items=items, failures=failures, max_side=max_side, pairs=pairs)


def _pairs(f: Path, limits: Limits, max_side: int | None, pairs: Pairs) -> list[Item]:
    """The portrait ``f`` as one LR/HR pair per degradation level (decoded once; all or none)."""
    full = decode(f, limits=limits)
    hr = crop_to_scale(fit_max_side(full, None if max_side is None else max_side * pairs.scale).rgb, pairs.scale)
    h, w = hr.shape[0] // pairs.scale, hr.shape[1] // pairs.scale  # every level's LR size (make_lr's)
    if min(h, w) < limits.min_side:  # checked once, before any degradation is made
        shrunk = max_side is not None and max(full.rgb.shape[:2]) > max_side * pairs.scale  # fit_max_side's test
        raise ImageError(f"{f}: its x{pairs.scale} LR ({w}x{h}) is below limits.min_side={limits.min_side}"
                         + (f" after dataset.max_side={max_side} (raise it)" if shrunk else ""))
    out = []
    for level in pairs.levels:
        lr = make_lr(hr, scale=pairs.scale, level=level, seed=pairs.seed, name=f.stem)
        out.append(Item(name=pairs.item_name(f.stem, level), path=f, image=Image(rgb=lr, path=f),
                        content_hash=array_hash(lr) + array_hash(hr)[:16], hr=hr, level=level))
    return out
