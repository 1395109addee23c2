"""Identity: dlib face-recognition embeddings (128-d) of each face, output versus input.

Models from the PyPI package ``face-recognition-models`` (the 5-point landmark model and
the ResNet recognition model; dlib's 68-point model, whose training data carries
non-commercial terms, is not used).  Landmarks and the aligned chip come from ``dlib-bin``;
the recognition network runs in torch (:mod:`.dlib_resnet`: the descriptors of dlib's own
``compute_face_descriptor`` within 3e-7 on the bundled portraits, 8-10x faster than dlib-bin's
BLAS-less build).  Distances: same person
~0.1-0.2 apart, different people ~0.85; the usual threshold is 0.6.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MetricError
from ..facegeom import Face
from .context import MODEL_LOAD_LOCK, Context
from .dlib_resnet import CHIP_PX, FaceNet

CHIP_FACE_PX = 160  # faces are cropped and resized so the box is about this wide before dlib sees them


def _models() -> tuple[Any, FaceNet]:
    """The landmark predictor and the face network, loaded once.  Scoring threads ask for them at
    once on a study's first trial: the lock makes one thread load while the others wait (two
    threads importing dlib and building the network together deadlocked on the import lock)."""
    with MODEL_LOAD_LOCK:
        return _load_models()


@functools.lru_cache(maxsize=1)
def _load_models() -> tuple[Any, FaceNet]:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MetricError("identity needs the package face-recognition-models (pip install face-recognition-models)")
    root = Path(list(spec.submodule_search_locations)[0]) / "models"
    import dlib

    return (dlib.shape_predictor(str(root / "shape_predictor_5_face_landmarks.dat")),
            FaceNet(root / "dlib_face_recognition_resnet_model_v1.dat"))


def aligned(rgb: np.ndarray, face: Face) -> tuple[np.ndarray, Any]:
    """(uint8 crop scaled so the box is :data:`CHIP_FACE_PX` wide, dlib's 5-point landmarks on it)."""
    import cv2
    import dlib

    sp, _ = _models()
    x0, y0, x1, y1 = face.box
    bw = max(x1 - x0, 1.0)
    k = CHIP_FACE_PX / bw
    m = 0.5 * bw  # margin around the box
    h, w = rgb.shape[:2]
    cx0, cy0 = int(max(x0 - m, 0)), int(max(y0 - m, 0))
    cx1, cy1 = int(min(x1 + m, w)), int(min(y1 + m, h))
    crop = rgb[cy0:cy1, cx0:cx1]
    interp = cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC
    crop = cv2.resize(crop, (max(round(crop.shape[1] * k), 1), max(round(crop.shape[0] * k), 1)), interpolation=interp)
    u8 = np.ascontiguousarray((np.clip(crop, 0, 1) * 255).round().astype(np.uint8))
    rect = dlib.rectangle(round((x0 - cx0) * k), round((y0 - cy0) * k), round((x1 - cx0) * k), round((y1 - cy0) * k))
    return u8, sp(u8, rect)


def chip(rgb: np.ndarray, face: Face) -> np.ndarray:
    """The 150x150 aligned chip dlib's ``compute_face_descriptor(crop, landmarks)`` embeds for
    ``face`` (box in ``rgb`` pixels): ``dlib.get_face_chip`` with its padding 0.25."""
    import dlib

    u8, shape = aligned(rgb, face)
    return np.asarray(dlib.get_face_chip(u8, shape, size=CHIP_PX, padding=0.25))


def embeddings(rgb: np.ndarray, faces: list[Face]) -> np.ndarray:
    """(len(faces), 128) dlib descriptors, one batch through the network."""
    if not faces:
        return np.zeros((0, 128))
    return _models()[1](np.stack([chip(rgb, f) for f in faces]))


def identity(ctx: Context) -> float:
    """Worst (largest) per-face identity distance, output versus input (lower better; > 0.6 = a
    different person).  Per-face distances go to ``ctx.extras['identity_per_face']``."""
    faces = ctx.ref.faces
    if not faces:
        ctx.notes["identity"] = "no face"
        return math.nan
    memo = ctx.ref.memo
    if "emb_in" not in memo:
        memo["emb_in"] = embeddings(ctx.ref.input, faces)
    dists = [float(d) for d in np.linalg.norm(embeddings(ctx.output, ctx.ref.faces_out) - memo["emb_in"], axis=1)]
    ctx.extras["identity_per_face"] = dists
    return max(dists)
