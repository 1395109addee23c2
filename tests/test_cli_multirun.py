"""Hydra multirun (``tuner <command> -m a=x,y``): the run exits with its worst job's code, whichever
job came last (each job used to overwrite the code, so only the last one counted)."""

from __future__ import annotations

import pytest
from conftest import SRVGG_OVERRIDES


@pytest.mark.parametrize(("cmd", "codes", "rc"), [
    ("report", [1, 0], 1), ("report", [0, 1], 1), ("evaluate", [3, 0], 3), ("evaluate", [1, 3], 1),
    ("evaluate", [3, 1, 0], 1), ("report", [0, 0], 0), ("report", [], 0),
    ("compare", [1, 0], 1), ("compare", [0, 1], 1), ("compare", [2, 0], 2), ("compare", [1, 2], 2),
    ("compare", [2, 1, 0], 2),
])
def test_the_worst_code_wins(cmd, codes, rc):
    from tuner.cli import worst_code

    assert worst_code(cmd, codes) == rc


def _evaluated(folder):
    folder.mkdir()
    (folder / "metrics.csv").write_text("image,niqe\na.png,4.2\nb.png,5.1\n")
    return folder


def test_report_multirun_fails_if_any_job_fails(tmp_path, run_cli):
    good, other, missing = _evaluated(tmp_path / "good"), _evaluated(tmp_path / "other"), tmp_path / "missing"
    for sweep in (f"{missing},{good}", f"{good},{missing}"):
        r = run_cli("report", "-m", f"eval={sweep}", f"out={tmp_path / 'rep'}", cwd=tmp_path)
        assert r.returncode == 1, r.stderr[-2000:]
        assert "has neither compare.json nor metrics.csv" in r.stderr and "2 jobs exited" in r.stderr
    r = run_cli("report", "-m", f"eval={good},{other}", f"out={tmp_path / 'rep'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "rep" / "report.html").is_file()


def test_compare_multirun_a_failing_job_is_not_hidden_by_a_later_pass(tmp_path, tiny_weights, copy_portraits,
                                                                      run_cli):
    """compare is the CI gate: a sweep whose first job fails (1) and second passes exited 0."""
    portraits = copy_portraits(["A02_usnavy_grace_hopper.jpg", "A13_flickr_ccby_05.jpg"])
    args = ["compare", "-m", f"weights_dir={tiny_weights}", f"dataset.path={portraits}", "dataset.max_side=64",
            f"out={tmp_path / 'cmp'}", "baseline=realesr-general-x4v3", "report=false", *SRVGG_OVERRIDES,
            # the tiny random network passes no absolute gate: only the relative LR-PSNR gate, swept
            "~compare.gates.identity", "~compare.gates.seam", "~compare.gates.edge_halo"]
    # an identical candidate: at least 1 dB better than the baseline fails, at most 1 dB worse passes
    r = run_cli(*args, "candidate=realesr-general-x4v3", "compare.gates.lr_psnr.min_relative=1.0,-1.0", cwd=tmp_path)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    fail, ok = r.stdout.find("verdict: FAIL"), r.stdout.find("verdict: PASS")
    assert 0 <= fail < ok, r.stdout[-2000:]  # the failing job ran first
    # a comparison that could not run (2) is not hidden by a later pass either
    r = run_cli(*args, "candidate=nothing-like-this,realesr-general-x4v3", cwd=tmp_path)
    assert r.returncode == 2 and "not a preset" in r.stderr, r.stderr[-2000:]
    assert "verdict: PASS" in r.stdout
