"""Reports from a real tiny study and a compare result: content, a headless-browser render, and
the exploration notebook executed headless."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html import escape
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from conftest import GFPGAN_OVERRIDES, ROOT, SRVGG_OVERRIDES
from helpers import PORTRAITS, chromium, render

from tuner.images import decode

IMAGES = ["A02_usnavy_grace_hopper.jpg", "A13_flickr_ccby_05.jpg", "A04_whitehouse_obama_2012.jpg"]


def _cli(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNER_CACHE_DIR": str(cache)}
    env.pop("TUNER_WEIGHTS_DIR", None)
    return subprocess.run([sys.executable, "-m", "tuner.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, tiny_weights) -> Path:
    """A real 4-trial study of the tiny networks on three portraits; returns its working folder."""
    d = tmp_path_factory.mktemp("study")
    data = d / "portraits"
    data.mkdir()
    for n in IMAGES:
        (data / n).write_bytes((PORTRAITS / n).read_bytes())
    r = _cli("tune", "experiment=nr", "study.name=rep", f"weights_dir={tiny_weights}", f"dataset.path={data}", "dataset.max_side=64",
             "study.n_trials=4", "study.n_startup_trials=2", "study.allow_infeasible=true", *SRVGG_OVERRIDES,
             *GFPGAN_OVERRIDES, cwd=d, cache=d / "cache")
    assert r.returncode == 0, r.stderr[-3000:]
    return d


def test_study_report_has_the_verdict_the_plots_and_the_gates(tiny_study):
    r = _cli("report", "study.name=rep", cwd=tiny_study, cache=tiny_study / "cache")
    assert r.returncode == 0, r.stderr[-3000:]
    page = tiny_study / "reports" / "generated" / "rep" / "report.html"
    html = page.read_text()
    # the verdict is the best trial's, as the study recorded it: the preset the study exported names the
    # trial and whether every constraint held; the storage's record of that trial agrees
    preset = yaml.safe_load((tiny_study / "runs" / "rep" / "best_preset.yaml").read_text())
    number, held = preset["provenance"]["trial"], preset["provenance"]["all_constraints_hold"]
    study = optuna.load_study(study_name="rep", storage=f"sqlite:///{tiny_study / 'runs' / 'rep' / 'study.db'}")
    assert study.trials[number].user_attrs["feasible"] is held
    verdict = re.search(r"<div class='verdict (pass|fail)'>(.*?)</div>", html, re.S)
    assert verdict is not None, html[:2000]
    assert f"<b>best trial {number}</b>" in verdict[2]
    assert f"constraints hold on every image: <b>{'yes' if held else 'no'}</b>" in verdict[2], verdict[2]
    assert verdict[1] == ("pass" if held else "fail")
    for name, c in preset["constraints"].items():  # a "no" names each broken constraint
        assert (escape(name) in verdict[2]) is (not c["holds"]), (name, verdict[2])
    for section in ("Optimisation history", "Parameter importances", "Parallel coordinates", "Top 10 trials",
                    "Metric distributions", "Best trial: faces at 100 %"):
        assert section in html, section
    assert html.count("data:image/png;base64,") >= 4  # self-contained: every image embedded
    assert "src=\"http" not in html and "src=\"file" not in html


def test_an_unknown_study_or_folder_is_a_clear_error(tiny_study, tmp_path):
    r = _cli("report", "study.name=nope", cwd=tiny_study, cache=tiny_study / "cache")
    assert r.returncode == 1 and "nope" in r.stderr
    r = _cli("report", f"eval={tmp_path}", cwd=tiny_study, cache=tiny_study / "cache")
    assert r.returncode == 1 and "neither compare.json nor metrics.csv" in r.stderr


@pytest.mark.skipif(chromium() is None and not os.environ.get("TUNER_REQUIRE_BROWSER"),
                    reason="Debian's chromium is not installed here (.ci/run installs it and requires this test; "
                           "`apt-get install chromium`): the report is not rendered")
def test_reports_render_in_headless_chromium(tiny_study, tmp_path):
    page = tiny_study / "reports" / "generated" / "rep" / "report.html"
    if not page.exists():
        assert _cli("report", "study.name=rep", cwd=tiny_study, cache=tiny_study / "cache").returncode == 0
    got = render(page, tmp_path / "shot.png")
    done, n_images, broken, errors = got["selfcheck"]
    assert done == 1 and n_images >= 4 and broken == 0 and errors == 0
    assert got["console_errors"] == []
    shot = decode(got["screenshot"]).rgb
    assert shot.shape[0] >= 1000 and float(np.std(shot)) > 0.05  # not a blank page

    # the check can fail: a script error and an undecodable image are seen
    bad = tmp_path / "bad.html"
    bad.write_text(page.read_text().replace("</body>", "<script>notDefined();</script>"
                                            "<img src='data:image/png;base64,AAAA'></body>"))
    got = render(bad, tmp_path / "bad.png")
    assert got["selfcheck"][2] >= 1 and got["selfcheck"][3] >= 1 and got["console_errors"]


def test_the_notebook_runs_headless_on_the_study(tiny_study):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "explore_study.ipynb", as_version=4)
    os.environ["TUNER_RUN_DIR"] = str(tiny_study / "runs" / "rep")
    os.environ["TUNER_STUDY_NAME"] = "rep"
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    finally:
        os.environ.pop("TUNER_RUN_DIR")
        os.environ.pop("TUNER_STUDY_NAME")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "study rep: 4 trials" in text and "best trial" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # the plots were drawn


def test_an_evaluate_folder_gets_a_report(tiny_study, tiny_weights, tmp_path):
    out = tmp_path / "eval"
    r = _cli("evaluate", f"out={out}", f"weights_dir={tiny_weights}", f"dataset.path={tiny_study / 'portraits'}",
             "dataset.max_side=64", "metrics.names=[piqe,crunch,lr_psnr]", *SRVGG_OVERRIDES, cwd=tiny_study,
             cache=tiny_study / "cache")
    assert r.returncode == 0, r.stderr[-2000:]
    r = _cli("report", f"eval={out}", f"out={tmp_path / 'rep'}", cwd=tiny_study, cache=tiny_study / "cache")
    assert r.returncode == 0, r.stderr[-2000:]
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "3 image(s) scored" in html and "Distributions" in html and html.count("<tr>") >= 4
