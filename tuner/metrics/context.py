"""What every metric reads: the output, and an analysis of its input shared across trials.

``InputAnalysis`` holds everything that depends only on the input and the output size
(the classic upscale R, luminances, skin masks, faces, reference band energies, input
face embeddings).  A study computes it once per portrait and reuses it for every trial,
so a warm trial pays only for what depends on the output.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import cv2
import numpy as np

from ..facegeom import Face, bbox, skin_labels
from ..images import downscale, luminance, reference_upscale
from ..texture import judged_faces

# one network loads at a time in a process: scoring threads ask for their models at once on a
# study's first trial, and two threads importing dlib / building torch networks together deadlocked
MODEL_LOAD_LOCK = threading.RLock()

T = TypeVar("T")


class cached_property(Generic[T]):  # noqa: N801 (named as the functools one it replaces)
    """``functools.cached_property`` without Python 3.11's class-wide lock (removed in 3.12):
    under that lock, outputs scored in parallel threads compute their analyses one at a time.
    Two threads reading the same missing value may both compute it (same value, stored once)."""

    def __init__(self, fn: Callable[[Any], T]) -> None:
        self.fn, self.name, self.__doc__ = fn, fn.__name__, fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, cls: type | None = None) -> T:
        if obj is None:
            return self  # type: ignore[return-value]
        value = self.fn(obj)
        obj.__dict__[self.name] = value
        return value


@dataclass
class InputAnalysis:
    """Per-input state for scoring outputs of size ``out_hw``.  Lazily computed, then reused."""

    input: np.ndarray  # RGB float (h, w, 3)
    faces: list[Face]  # in input pixels
    out_hw: tuple[int, int]
    memo: dict[str, Any] = field(default_factory=dict)
    hr: np.ndarray | None = None  # the ground truth at the output size, where the dataset has it

    def __post_init__(self) -> None:
        if self.hr is not None and self.hr.shape[:2] != tuple(self.out_hw):
            raise ValueError(f"ground truth {self.hr.shape[:2]} does not match the output size {self.out_hw}")

    @property
    def scale(self) -> float:
        return self.out_hw[1] / self.input.shape[1]

    @cached_property
    def reference(self) -> np.ndarray:
        """R: Lanczos upscale of the input to the output size."""
        return reference_upscale(self.input, self.out_hw)

    @cached_property
    def y_ref(self) -> np.ndarray:
        return luminance(self.reference)

    @cached_property
    def faces_out(self) -> list[Face]:
        return [f.scaled(self.scale) for f in self.faces]

    @cached_property
    def skin_out_labels(self) -> np.ndarray:
        """Skin at output size, labelled by face (:func:`tuner.facegeom.skin_labels`), computed on R so
        it is the same region for every trial."""
        return skin_labels(self.reference, self.faces_out)

    @cached_property
    def skin_out(self) -> np.ndarray:
        """Skin mask at output size (every face's)."""
        return self.skin_out_labels > 0

    @cached_property
    def skin_in_labels(self) -> np.ndarray:
        return skin_labels(self.input, self.faces)

    @cached_property
    def skin_in(self) -> np.ndarray:
        return self.skin_in_labels > 0

    @cached_property
    def judged_faces(self) -> list[int]:
        """Labels of the faces a per-face guard rail judges on their own, where the input has several:
        those whose skin covers at least :data:`tuner.texture.MIN_SKIN_PX` input pixels (the least the
        texture predictor reads; :func:`tuner.texture.judged_faces`, as the texture policy's).  Empty with one face or none: then the image's value is its skin's."""
        return judged_faces(self.skin_out_labels, len(self.faces), self.scale)

    @cached_property
    def skin_box(self) -> tuple[slice, slice] | None:
        """Crop (output px) around the skin with a margin for filters: texture metrics run on it only."""
        return bbox(self.skin_out, margin=int(4 * self.scale) + 4)


@dataclass
class Context:
    """One output to score, with its input's analysis.  Shared intermediate results are cached."""

    output: np.ndarray  # RGB float, output size
    ref: InputAnalysis
    tile: int = 0  # tile size used (input px), 0 = untiled
    face_mask: np.ndarray | None = None  # soft paste mask (output px), when faces were pasted
    iqa_max_side: int = 1024
    notes: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.output.shape[:2] != tuple(self.ref.out_hw):
            raise ValueError(f"output {self.output.shape[:2]} does not match analysis size {self.ref.out_hw}")

    @cached_property
    def y_out(self) -> np.ndarray:
        return luminance(self.output)

    @cached_property
    def down(self) -> np.ndarray:
        """The output downscaled to the input size (antialiased bicubic)."""
        return downscale(self.output, self.ref.input.shape[:2])

    @cached_property
    def iqa_image(self) -> np.ndarray:
        """What NR-IQA metrics score: the output, INTER_AREA-resized so its long side <= iqa_max_side.

        Scoring at one fixed analysis size keeps NR scores comparable across trials and
        bounds their cost; the skin-texture metrics look at full resolution instead.
        """
        h, w = self.output.shape[:2]
        if max(h, w) <= self.iqa_max_side:
            return self.output
        s = self.iqa_max_side / max(h, w)
        return np.clip(cv2.resize(self.output, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA), 0, 1)
