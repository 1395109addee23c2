"""A non-editable install (a wheel) carries its configs and portraits and runs from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

from conftest import ROOT, SRVGG_OVERRIDES


def test_a_wheel_runs_tuner_tune_from_another_directory(tmp_path, tiny_weights):
    # build from a copy of the source (what git tracks or would track), never from a stale build/ folder
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    src = tmp_path / "src"
    for rel in listed:
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(wheels), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = wheels.glob("tuner-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    # every config, portrait and metric model file of the source is in the wheel, under tuner/
    want = {f"tuner/{rel}" for rel in listed if rel.startswith(("conf/", "datasets/"))}
    want |= {rel for rel in listed if rel.startswith("tuner/metrics/data/")}
    assert want and want <= names, sorted(want - names)
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(whl)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target), TUNER_CACHE_DIR=str(tmp_path / "cache"))
    code = "import tuner, sys; print(tuner.__file__); from tuner.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "tune", "experiment=nr", "study.name=w", f"weights_dir={tiny_weights}",
                        "dataset.limit=2", "dataset.max_side=64", "study.n_trials=1", "study.allow_infeasible=true",
                        "face=none", "~search.params.face_weight", "~search.params.face_upsample",
                        *SRVGG_OVERRIDES], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines()[0].startswith(str(target))  # the installed copy, not the checkout
    run = elsewhere / "runs" / "w"
    assert (run / "best_preset.yaml").is_file() and (run / "summary.txt").is_file()
    assert "datasets/portraits" in (run / "summary.txt").read_text()
