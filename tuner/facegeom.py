"""Face geometry without any model package: boxes, landmarks, the cacheable form of a face list,
and the skin mask.  Shared by the face stage (:mod:`tuner.faces`) and the metrics, so scoring
never imports torch or a model adapter.

Coordinates are pixels with the pixel-centre convention (pixel ``i`` spans ``[i - 0.5, i + 0.5]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Face:
    """A detected face in input-image pixel coordinates."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    landmarks: np.ndarray  # (5, 2) float32: left eye, right eye, nose, mouth left, mouth right
    score: float

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.landmarks[0] - self.landmarks[1]))

    def scaled(self, s: float) -> Face:
        """The same face in an image ``s`` times larger (pixel-centre convention)."""
        return Face(
            box=tuple((np.asarray(self.box) + 0.5) * s - 0.5),  # type: ignore[arg-type]
            landmarks=((self.landmarks + 0.5) * s - 0.5).astype(np.float32),
            score=self.score,
        )


def faces_to_array(faces: list[Face]) -> np.ndarray:
    """(N, 15) float64: box(4), landmarks(10), score — a cacheable form of a face list."""
    if not faces:
        return np.zeros((0, 15))
    return np.array([[*f.box, *f.landmarks.ravel(), f.score] for f in faces], dtype=np.float64)


def faces_from_array(a: np.ndarray) -> list[Face]:
    return [Face(box=tuple(r[:4]), landmarks=r[4:14].reshape(5, 2).astype(np.float32), score=float(r[14])) for r in a]


def bbox(mask: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    """The crop around ``mask``'s pixels with ``margin`` px on every side (clipped to the image); None if empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    h, w = mask.shape
    return (slice(max(ys.min() - margin, 0), min(ys.max() + margin + 1, h)),
            slice(max(xs.min() - margin, 0), min(xs.max() + margin + 1, w)))


def skin_mask(rgb: np.ndarray, faces: list[Face]) -> np.ndarray:
    """Boolean skin mask (H, W) of ``rgb``, from faces already in its coordinates.

    The face region (an ellipse fitted to box and landmarks) minus discs over the eyes
    (and brows above them) and the mouth, intersected with a YCrCb skin-colour model.
    Grey images have no chroma, so there the colour test is skipped.
    """
    return skin_labels(rgb, faces) > 0


def skin_labels(rgb: np.ndarray, faces: list[Face]) -> np.ndarray:
    """:func:`skin_mask` with each skin pixel labelled by its face: 0 = not skin, ``i + 1`` = the
    skin of ``faces[i]`` (where two face regions overlap, the later face's); uint16."""
    h, w = rgb.shape[:2]
    region = np.zeros((h, w), np.uint16)
    holes = np.zeros((h, w), np.uint8)
    for i, f in enumerate(faces):
        x0, y0, x1, y1 = f.box
        le, re, nose, ml, mr = f.landmarks
        ed = max(float(np.linalg.norm(re - le)), 1.0)
        cx, cy = float(nose[0]), float((y0 + y1) / 2 + 0.05 * (y1 - y0))
        ax, ay = max((x1 - x0) * 0.46, 1.0), max((y1 - y0) * 0.5, 1.0)
        cv2.ellipse(region, (round(cx), round(cy)), (round(ax), round(ay)), 0, 0, 360, i + 1, -1)
        r_eye = round(0.33 * ed)
        for eye in (le, re):
            cv2.circle(holes, (round(eye[0]), round(eye[1])), r_eye, 1, -1)
            cv2.circle(holes, (round(eye[0]), round(eye[1] - 0.35 * ed)), r_eye, 1, -1)  # brow
        mc = (ml + mr) / 2
        mw = max(float(np.linalg.norm(mr - ml)), 1.0)
        cv2.ellipse(holes, (round(mc[0]), round(mc[1])), (round(0.7 * mw), round(0.35 * mw)), 0, 0, 360, 1, -1)
    mask = (region > 0) & (holes == 0)
    u8 = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    ycc = cv2.cvtColor(u8, cv2.COLOR_RGB2YCrCb)
    cr, cb = ycc[:, :, 1].astype(np.int16), ycc[:, :, 2].astype(np.int16)
    is_grey = float(np.abs(cr - 128).mean() + np.abs(cb - 128).mean()) < 2.0
    if not is_grey:
        mask &= (cr >= 133) & (cr <= 180) & (cb >= 77) & (cb <= 135)
    return np.where(mask, region, 0).astype(np.uint16, copy=False)


def cheek_crop(mask: np.ndarray, size: int = 96) -> tuple[slice, slice] | None:
    """A ``size`` square centred on the skin pixel deepest inside the skin mask (a cheek)."""
    if not mask.any():
        return None
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    cy, cx = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return window(mask.shape, float(cy), float(cx), size)


def window(hw: tuple[int, int], cy: float, cx: float, size: int) -> tuple[slice, slice]:
    """A ``size`` square (smaller where the image is) centred on (cy, cx), kept inside ``hw``."""
    h, w = hw
    y0 = int(min(max(cy - size / 2, 0), max(h - size, 0)))
    x0 = int(min(max(cx - size / 2, 0), max(w - size, 0)))
    return slice(y0, min(y0 + size, h)), slice(x0, min(x0 + size, w))
