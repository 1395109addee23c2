"""Scoring: the metric cache never serves stale values."""

from __future__ import annotations

import numpy as np
from conftest import ROOT

from tuner.cache import StageCache
from tuner.scoring import Scorer


def _scorer(tmp_path, threshold=0.9):
    return Scorer(["crunch", "wax"], iqa_max_side=1024, detector="retinaface", detection_threshold=threshold,
                  cache=StageCache(tmp_path / "cache"))


def test_metric_cache_keys_on_input_faces_detector_and_metric_code(tmp_path, monkeypatch):
    from dataclasses import replace

    import cv2

    from tuner import metrics as M
    from tuner.faces import FaceDetector
    from tuner.images import decode, fit_max_side, from_array
    from tuner.pipeline import Result

    hr = fit_max_side(decode(ROOT / "datasets" / "portraits" / "A13_flickr_ccby_05.jpg"), 256).rgb
    h, w = hr.shape[0] // 4 * 4, hr.shape[1] // 4 * 4
    hr = np.ascontiguousarray(hr[:h, :w])
    inp = cv2.resize(hr, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
    out = np.clip(hr + 0.5 * (hr - cv2.GaussianBlur(hr, (0, 0), 1.5)), 0, 1)
    res = Result(image=from_array(out), sr=out, reference=out, faces=[], face_mask=None, scale=4.0, tile=0)
    faces = FaceDetector()(inp)
    analysis = M.InputAnalysis(inp, faces, (h, w))

    first, _ = _scorer(tmp_path).score(res, analysis)
    again, extra = _scorer(tmp_path).score(res, analysis)  # a new process: served from the disk cache
    assert again == first and extra == {"memo": True}

    # another detector threshold, other faces, another input: each is a miss, never the old values
    assert _scorer(tmp_path, 0.5).score(res, analysis)[1] != {"memo": True}
    moved = [replace(f, box=tuple(np.asarray(f.box) + 2)) for f in faces]
    assert _scorer(tmp_path).score(res, M.InputAnalysis(inp, moved, (h, w)))[1] != {"memo": True}
    assert _scorer(tmp_path).score(res, M.InputAnalysis(np.ascontiguousarray(inp[::-1]), faces, (h, w)))[1] \
        != {"memo": True}

    # edit a metric's behaviour (its code): the cached value must not be served
    def crunch_v2(ctx):
        """Crunch, edited."""
        return 42.0

    monkeypatch.setitem(M.TABLE, "crunch", replace(M.TABLE["crunch"], fn=crunch_v2))
    edited, extra = _scorer(tmp_path).score(res, analysis)
    assert extra != {"memo": True} and edited["crunch"] == 42.0 and edited["wax"] == first["wax"]


def test_metric_code_digest_covers_helpers_and_model_files(tmp_path):
    """Editing a shared helper (not a metric function) or a model file changes the cache key's digest."""
    import shutil

    from tuner.metrics import version as V

    pkg = ROOT / "tuner"
    names = {f.relative_to(pkg).as_posix() for f in V.metric_files()}
    # images.py holds luminance and the reference upscale R the skin metrics compare against
    assert {"metrics/nss.py", "metrics/skin.py", "metrics/data/niqe_live.npz", "facegeom.py", "images.py"} <= names
    copy = tmp_path / "tuner"
    shutil.copytree(pkg, copy, ignore=shutil.ignore_patterns("__pycache__"))
    files = [copy / n for n in sorted(names)]
    before = V.files_digest(files, copy)
    assert before == V.files_digest([pkg / n for n in sorted(names)], pkg)
    nss = copy / "metrics" / "nss.py"
    nss.write_text(nss.read_text().replace("def mscn(", "def mscn(  ", 1))  # an edit to a helper only
    assert V.files_digest(files, copy) != before
