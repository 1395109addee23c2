"""Real Real-ESRGAN weights from ../shared/weights on a bundled portrait (skipped when absent)."""

from __future__ import annotations

import re

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


OLD_PHOTOS = ["A03_usnavy_grace_hopper_128px.jpg", "A06_lincoln_1860s_160px.png", "A08_douglass_brady_c1880.png",
              "A09_sojourner_truth_1864.png", "A11_usct_25th_regiment_1864_group.jpg"]


@pytest.mark.weights
@pytest.mark.slow
@needs_shared_weights("realesr-general-x4v3.pth")
def test_a_short_study_on_real_old_photographs_exports_a_preset_with_the_default_constraints(tmp_path, copy_portraits,
                                                                                           run_cli):
    """Real degradation, not a synthetic one: five scanned and compressed old photographs, no truth.  The
    bands calibrated on clean downscales (edge overshoot, wax, identity on a 75 px face) are already broken
    there by the model as shipped; relative to it, a 6-trial default study must still export a preset whose
    gates hold on every image."""
    import yaml

    folder = copy_portraits(OLD_PHOTOS, "old")
    r = run_cli("tune", "study.name=old", "dataset=portraits", f"dataset.path={folder}", "study.n_trials=6",
                f"weights_dir={SHARED_WEIGHTS}", cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    run = tmp_path / "runs" / "old"
    preset = yaml.safe_load((run / "best_preset.yaml").read_text())
    assert preset["constraints"] and all(c["holds"] for c in preset["constraints"].values())
    summary = (run / "summary.txt").read_text()
    assert "constraints hold on every image: True" in summary
    # a tuned trial, not the model as shipped (which holds every gate relaxed to itself by construction)
    best = re.search(r"best trial: (\d+)", summary)
    assert best is not None and int(best.group(1)) != 0 and preset["params"]["texture_target"] is not None
    # the relaxed gates were needed: the model as shipped (the stored baseline) is past the clean bands here
    import optuna

    base = optuna.load_study(study_name="old", storage=f"sqlite:///{run / 'study.db'}").user_attrs["baseline"]
    assert max(v for v in base["edge_halo"].values() if v is not None) > 0.03
    # identity on A09, a 75 px face, is 0.451 under the model as shipped (README, "identity, capped"): past the
    # 0.45 band by 0.001, too near to assert which side across BLAS builds, so only its value is checked
    a09 = {k: v for k, v in base["identity"].items() if k.startswith("A09_")}
    assert len(a09) == 1 and list(a09.values())[0] == pytest.approx(0.451, abs=0.01), a09
    # and the exported trial holds the relaxed bound there, on that face: no further than the model as shipped
    tuned = optuna.load_study(study_name="old", storage=f"sqlite:///{run / 'study.db'}").trials[int(best.group(1))]
    (name, value), = a09.items()
    assert tuned.user_attrs["per_image"]["identity"][name] <= max(0.45, value) + 1e-9


@pytest.mark.weights
@needs_shared_weights("realesr-general-x4v3.pth")
def test_a_study_on_a_dithered_palette_portrait_exports_though_the_model_shifts_its_skin_colour(tmp_path, run_cli):
    """A web-style palette copy of a portrait (Pillow's web palette, Floyd-Steinberg dithered): the model as shipped
    shifts its skin colour past the ΔE 3 band.  Relative to the model as shipped, as edge overshoot and wax
    are, the skin-colour gate lets a short study export; with a fixed band this one exports nothing."""
    import optuna
    from PIL import Image as PILImage

    folder = tmp_path / "pal"
    folder.mkdir()
    with PILImage.open(PORTRAITS / "A01_nasa_eileen_collins.png") as im:
        small = im.convert("RGB")
        small.thumbnail((96, 96))
        small.convert("P").save(folder / "pal.png")
    r = run_cli("tune", "study.name=pal", "dataset=portraits", f"dataset.path={folder}", "study.n_trials=2",
                "tracking=none", f"weights_dir={SHARED_WEIGHTS}", cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    run = tmp_path / "runs" / "pal"
    assert (run / "best_preset.yaml").is_file()
    study = optuna.load_study(study_name="pal", storage=f"sqlite:///{run / 'study.db'}")
    # the relaxed gate was needed: the model as shipped shifts the skin by ΔE 6.1 (README), and no trial holds 3
    assert study.user_attrs["baseline"]["delta_e_skin"]["pal"] == pytest.approx(6.1, abs=0.3)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 2 and all(t.user_attrs["per_image"]["delta_e_skin"]["pal"] > 3.0 for t in done)
    # the exported trial shifts the skin no further than the model as shipped does
    best = re.search(r"best trial: (\d+)", (run / "summary.txt").read_text())
    assert best is not None
    exported = study.trials[int(best.group(1))].user_attrs["per_image"]["delta_e_skin"]["pal"]
    assert exported <= study.user_attrs["baseline"]["delta_e_skin"]["pal"] + 1e-9
