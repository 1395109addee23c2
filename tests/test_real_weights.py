"""Real Real-ESRGAN weights from ../shared/weights on a bundled portrait (skipped when absent)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import PORTRAITS, SHARED_WEIGHTS, needs_shared_weights

from tuner.images import decode, fit_max_side, reference_upscale
from tuner.pipeline import Params, Pipeline, PipelineSpec
from tuner.weights import WeightStore, catalogue


@pytest.mark.weights
@pytest.mark.parametrize("name", [
    pytest.param("realesr-general-x4v3", marks=needs_shared_weights("realesr-general-x4v3.pth")),
    pytest.param("RealESRGAN_x4plus", marks=needs_shared_weights("RealESRGAN_x4plus.pth")),
])
def test_real_model_output_is_sane(name, tmp_path):
    image = fit_max_side(decode(PORTRAITS / "A02_usnavy_grace_hopper.jpg"), 96)
    spec = PipelineSpec(model=catalogue("model")[name])
    out = Pipeline(spec, store=WeightStore(weights_dir=SHARED_WEIGHTS, allow_download=False)).run(image, Params()).image.rgb
    h, w = image.size
    assert out.shape == (4 * h, 4 * w, 3)
    assert np.isfinite(out).all()
    ref = reference_upscale(image.rgb, (4 * h, 4 * w))
    noise = np.random.default_rng(0).random(out.shape, dtype=np.float32)
    d_ref, d_noise = np.abs(out - ref).mean(), np.abs(out - noise).mean()
    assert d_ref < 0.25 * d_noise, (d_ref, d_noise)


@pytest.mark.weights
@needs_shared_weights("RealESRGAN_x4plus.pth")
def test_x4plus_is_crunchier_than_its_lanczos_blend():
    """The crunch acceptance check on real weights, run in CI (6.8 s at 128 px on 2 cores, pytest --durations):
    blending 50 % Lanczos lowers crunch and edge halo."""
    from tuner.faces import FaceDetector
    from tuner.metrics import Context, InputAnalysis, score

    image = fit_max_side(decode(PORTRAITS / "A13_flickr_ccby_05.jpg"), 128)
    pipe = Pipeline(PipelineSpec(model=catalogue("model")["RealESRGAN_x4plus"]),
                    store=WeightStore(weights_dir=SHARED_WEIGHTS, allow_download=False))
    plain = pipe.run(image, Params())
    blended = pipe.run(image, Params(blend=0.5))
    analysis = InputAnalysis(image.rgb, FaceDetector()(image.rgb), plain.image.rgb.shape[:2])
    a = score(Context(plain.image.rgb, analysis), ["crunch", "edge_halo"])
    b = score(Context(blended.image.rgb, analysis), ["crunch", "edge_halo"])
    assert a["crunch"] > b["crunch"] + 1.0 and a["edge_halo"] > b["edge_halo"], (a, b)
