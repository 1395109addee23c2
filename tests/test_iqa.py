"""Built-in NR-IQA (NIQE, BRISQUE, PIQE) against the MATLAB reference values, and pyiqa-free.

Golden values come from an implementation tuner did not write: the official MATLAB code,
as run by pyiqa's authors on their five calibration images and published in
github.com/chaofengc/IQA-PyTorch ``ResultsCalibra/results_official.csv`` (commit 01ae427f;
rows ``niqe``, ``brisque``, ``piqe``).  The images and the table rows are in
tests/data/iqa_calibration/ (see its README for provenance).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tuner.errors import MetricError
from tuner.metrics import Context, InputAnalysis, score
from tuner.metrics.nr_brisque import brisque, live_model
from tuner.metrics.nr_niqe import niqe, pristine_model
from tuner.metrics.nr_piqe import piqe
from tuner.metrics.nss import imresize, rgb2gray

ROOT = Path(__file__).resolve().parent.parent
CALIB = Path(__file__).resolve().parent / "data" / "iqa_calibration"
IMAGES = ("I03", "I04", "I06", "I08", "I19")

# ResultsCalibra/results_official.csv, MATLAB reference rows (values as printed there)
MATLAB = {
    "niqe": (15.7536293917814, 3.65492152353770, 3.23547743716998, 3.18403333858339, 8.63519663862637),
    "brisque": (94.6421, -0.107618, 0.992889, 5.35827, 72.2617),
    "piqe": (100.00, 21.62, 35.86, 41.15, 76.95),
}
# Accepted deviation: a share of the reference, or an absolute amount where values are small.
# NIQE is held to 1 % / 0.05 (tuner is within 0.6 %; basicsr's calculate_niqe, which tuner used
# before, is 1.2 % and 3.8 % off on I03 and I04, so this test fails on it); BRISQUE to 5 % / 1.0
# (the 5 % of the issue; the old `brisque` package is 7.7 and 17.6 points off on I03 and I19).
# PIQE is printed with 2 decimals, so it must agree to their rounding.
REL_TOL = {"niqe": 0.01, "brisque": 0.05}
ABS_TOL = {"niqe": 0.05, "brisque": 1.0}


def _rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(CALIB / f"{name}.png").convert("RGB"))


@pytest.fixture(scope="module")
def calibration_scores() -> dict[str, list[float]]:
    """Scores through the public path: float RGB image -> Context -> metrics.score."""
    out: dict[str, list[float]] = {m: [] for m in MATLAB}
    for name in IMAGES:
        rgb = _rgb(name).astype(np.float32) / 255.0
        s = score(Context(rgb, InputAnalysis(rgb, [], rgb.shape[:2])), list(MATLAB))
        for m in MATLAB:
            out[m].append(s[m])
    return out


@pytest.mark.parametrize("metric", ["niqe", "brisque"])
def test_matches_matlab_reference(calibration_scores, metric):
    for name, got, ref in zip(IMAGES, calibration_scores[metric], MATLAB[metric], strict=True):
        tol = max(REL_TOL[metric] * abs(ref), ABS_TOL[metric])
        assert abs(got - ref) <= tol, f"{metric} on {name}: {got:.4f} vs MATLAB {ref} (tolerance {tol:.3f})"


def test_piqe_matches_matlab_reference(calibration_scores):
    for name, got, ref in zip(IMAGES, calibration_scores["piqe"], MATLAB["piqe"], strict=True):
        assert abs(got - ref) <= 0.006, f"piqe on {name}: {got:.4f} vs MATLAB {ref}"


def test_pure_functions_take_matlab_grey():
    """The pure functions on MATLAB rgb2gray give the same numbers as the Context path."""
    g = rgb2gray(_rgb("I04"))
    assert g.dtype == np.float64 and g.max() <= 255 and np.all(g == np.round(g))
    assert niqe(g) == pytest.approx(MATLAB["niqe"][1], rel=0.01)
    assert brisque(g) == pytest.approx(MATLAB["brisque"][1], abs=0.05)
    assert piqe(_rgb("I04") / 255.0) == pytest.approx(MATLAB["piqe"][1], abs=0.006)


def test_imresize_matches_matlab_bicubic():
    # Golden value from Sanghyun Son's MATLAB-verified bicubic port (quoted in pyiqa's
    # pyiqa/matlab_utils/resize.py docstring): imresize(0:15 as 4x4, [3 3]) in MATLAB.  Its
    # 6.1505 is a typo for 6.1501: the input is linear, so out[1][0] = 6 + out[0][0] / 5.
    x = np.arange(16, dtype=np.float64).reshape(4, 4)
    want = [[0.7506, 2.1004, 3.4503], [6.1501, 7.5000, 8.8499], [11.5497, 12.8996, 14.2494]]
    np.testing.assert_allclose(imresize(x, 0.75), want, atol=1e-4)
    assert imresize(np.ones((97, 131)), 0.5).shape == (49, 66)  # ceil, as MATLAB


def test_models_are_the_live_releases():
    svr = live_model()
    assert svr.sv.shape == (774, 36) and svr.gamma == 0.05 and svr.rho == -153.591
    assert svr.feature_range[0].tolist() == [0.338, 10.0]
    mu, cov = pristine_model()
    assert mu.shape == (36,) and cov.shape == (36, 36) and np.allclose(cov, cov.T)


def test_degenerate_images_raise_or_note():
    with pytest.raises(MetricError, match="96x96"):
        niqe(np.random.default_rng(0).random((90, 300)) * 255)
    with pytest.raises(MetricError, match="flat"):
        brisque(np.full((64, 64), 128.0))
    flat = np.full((128, 128, 3), 0.5, np.float32)
    ctx = Context(flat, InputAnalysis(flat, [], flat.shape[:2]))
    s = score(ctx, ["niqe", "brisque"])
    assert math.isnan(s["niqe"]) and math.isnan(s["brisque"])
    assert "niqe" in ctx.notes and "brisque" in ctx.notes


_NO_PYIQA = """
import sys, numpy as np, yaml
from tuner.metrics import Context, InputAnalysis, score
rng = np.random.default_rng(0)
img = np.clip(rng.random((256, 256, 3)).astype(np.float32) * 0.2 + 0.4, 0, 1)
inp = img[::4, ::4].copy()
s = score(Context(img, InputAnalysis(inp, [], img.shape[:2])), ["niqe", "brisque", "piqe"])
assert all(np.isfinite(v) for v in s.values()), s
assert "pyiqa" not in sys.modules and "torch" not in sys.modules, "built-ins imported pyiqa/torch"
names = yaml.safe_load(open(sys.argv[1]))["names"]
score(Context(img, InputAnalysis(inp, [], img.shape[:2])), names)
assert "pyiqa" not in sys.modules, "the default metric set imported pyiqa"
print("ok")
"""


def test_builtins_and_default_set_never_import_pyiqa():
    """pyiqa is non-commercial: the default metrics must run without it (fresh interpreter)."""
    r = subprocess.run([sys.executable, "-c", _NO_PYIQA, str(ROOT / "conf" / "metrics" / "default.yaml")],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
