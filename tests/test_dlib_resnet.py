"""The torch port of dlib's face-recognition ResNet against dlib itself, on real faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import PORTRAITS

from tuner.errors import MetricError
from tuner.faces import FaceDetector
from tuner.images import decode, fit_max_side
from tuner.metrics import identity
from tuner.metrics.dlib_resnet import FaceNet, read

dlib = pytest.importorskip("dlib")


def _model_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "dlib_face_recognition_resnet_model_v1.dat"


@pytest.mark.parametrize("name", ["A02_usnavy_grace_hopper.jpg", "A04_whitehouse_obama_2012.jpg",
                                  "A13_flickr_ccby_05.jpg", "A03_usnavy_grace_hopper_128px.jpg"])
def test_descriptors_equal_dlibs_own_on_real_faces(name):
    rgb = fit_max_side(decode(PORTRAITS / name), 512).rgb
    faces = FaceDetector()(rgb)
    assert faces
    chips = np.stack([identity.chip(rgb, f) for f in faces])
    ours = identity.embeddings(rgb, faces)
    rec = dlib.face_recognition_model_v1(str(_model_file()))
    theirs = np.array([np.asarray(rec.compute_face_descriptor(c)) for c in chips])
    assert ours.shape == (len(faces), 128)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
    # and what identity computed before the port: dlib's descriptor from the crop and its landmarks
    before = np.array([np.asarray(rec.compute_face_descriptor(*identity.aligned(rgb, f))) for f in faces])
    np.testing.assert_allclose(ours, before, atol=2e-5)
    # a batch gives what one chip at a time gives
    single = np.concatenate([identity.embeddings(rgb, [f]) for f in faces])
    np.testing.assert_allclose(ours, single, atol=2e-6)


def test_the_file_is_read_by_structure_not_assumed():
    means, convs, affines, fc = read(_model_file())
    np.testing.assert_allclose(means, [122.782, 117.001, 104.298], atol=1e-3)  # dlib's input_rgb_image means
    assert len(convs) == 29 == len(affines)
    assert (convs[0].weight.shape, convs[0].stride, convs[0].padding) == ((32, 3, 7, 7), 2, 0)
    assert [c.stride for c in convs].count(2) == 5  # the stem and four down blocks
    assert fc.shape == (256, 128)


def test_a_damaged_model_file_is_a_clear_error(tmp_path):
    data = bytearray(_model_file().read_bytes())
    cut = tmp_path / "cut.dat"
    cut.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(MetricError, match="layer sequence"):
        FaceNet(cut)
    with pytest.raises(MetricError, match=r"\(N, 150, 150, 3\)"):
        FaceNet(_model_file())(np.zeros((1, 64, 64, 3), np.uint8))
