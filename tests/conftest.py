"""Shared fixtures: tiny random-weight models built here, the bundled portraits, and
the offline weights folder (tests needing it skip cleanly when it is absent)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tuner.compat import import_basicsr_stack

ROOT = Path(__file__).resolve().parent.parent
PORTRAITS = ROOT / "datasets" / "portraits"
SHARED_WEIGHTS = Path(os.environ.get("TUNER_TEST_WEIGHTS", ROOT.parent / "shared" / "weights"))

TINY_RRDB = {"type": "RRDBNet", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_block": 1, "num_grow_ch": 4,
             "scale": 4}
TINY_SRVGG = {"type": "SRVGGNetCompact", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_conv": 2, "upscale": 4,
              "act_type": "prelu"}
TINY_GFPGAN = {"type": "GFPGANv1Clean", "out_size": 64, "num_style_feat": 64, "channel_multiplier": 1,
               "decoder_load_path": None, "fix_decoder": False, "num_mlp": 2, "input_is_latent": True,
               "different_w": True, "narrow": 0.125, "sft_half": True}
# Hydra overrides that shrink the catalogue's architectures to the tiny stand-ins
SRVGG_OVERRIDES = ["model.arch.num_feat=8", "model.arch.num_conv=2"]
GFPGAN_OVERRIDES = ["face.arch.out_size=64", "face.arch.num_style_feat=64", "face.arch.channel_multiplier=1",
                    "face.arch.num_mlp=2", "face.arch.narrow=0.125"]


def tiny_state_dict(arch: dict, seed: int, key: str = "params") -> dict:
    """Random weights for a tiny network, scaled so outputs stay image-like."""
    from tuner import archs

    import_basicsr_stack()
    torch.manual_seed(seed)
    net = archs.build(arch)
    return {key: {k: v.clone() for k, v in net.state_dict().items()}}


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A weights_dir with tiny stand-ins under the catalogue's file names."""
    d = tmp_path_factory.mktemp("weights")
    torch.save(tiny_state_dict(TINY_SRVGG, 1), d / "realesr-general-x4v3.pth")
    torch.save(tiny_state_dict(TINY_SRVGG, 2), d / "realesr-general-wdn-x4v3.pth")
    torch.save(tiny_state_dict(TINY_RRDB, 3, "params_ema"), d / "tiny_rrdb.pth")
    torch.save(tiny_state_dict(TINY_GFPGAN, 4, "params_ema"), d / "GFPGANv1.4.pth")
    declare_weights(d, "tiny random-weight stand-in built by tests/conftest.py")
    return d


def declare_weights(folder: Path, provenance: str) -> None:
    """Declare every .pth in ``folder`` as an accepted copy (the catalogue pins the official sha256s)."""
    import yaml

    from tuner.weights import DECLARATIONS, sha256_file

    files = {p.name: {"sha256": sha256_file(p), "provenance": provenance} for p in sorted(folder.glob("*.pth"))}
    (folder / DECLARATIONS).write_text(yaml.safe_dump({"files": files}))


@pytest.fixture(scope="session")
def portrait_small() -> np.ndarray:
    """A real portrait (A13, close-up) downscaled to 96x64, RGB float."""
    from tuner.images import decode, fit_max_side

    return fit_max_side(decode(PORTRAITS / "A13_flickr_ccby_05.jpg"), 96).rgb


@pytest.fixture()
def copy_portraits(tmp_path):
    """Copy some bundled portraits into a fresh folder under tmp_path; returns the folder."""

    def _copy(names, folder: str = "in") -> Path:
        d = tmp_path / folder
        d.mkdir(exist_ok=True)
        for n in names:
            shutil.copy(PORTRAITS / n, d / n)
        return d

    return _copy


@pytest.fixture()
def run_cli(tmp_path):
    """Run ``tuner`` in a subprocess, with an isolated cache; returns CompletedProcess."""

    def _run(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
        e = dict(os.environ)
        e["TUNER_CACHE_DIR"] = str(tmp_path / "cache")
        e.pop("TUNER_WEIGHTS_DIR", None)
        e.update(env or {})
        return subprocess.run([sys.executable, "-m", "tuner.cli", *args], cwd=cwd or ROOT, env=e,
                              capture_output=True, text=True, timeout=timeout)

    return _run


def needs_shared_weights(*names: str):
    missing = [n for n in names if not (SHARED_WEIGHTS / n).is_file()]
    return pytest.mark.skipif(bool(missing), reason=f"offline weights absent: {missing} in {SHARED_WEIGHTS}")


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server for the scale-out tests: the one `.ci/run` started (TUNER_TEST_PG_URL,
    TUNER_TEST_PGDATA), else a throw-away one started here; skipped where PostgreSQL is not
    installed, unless TUNER_REQUIRE_PG=1 (CI), where that is a failure."""
    from helpers import PgServer

    url = os.environ.get("TUNER_TEST_PG_URL")
    if url:
        data = os.environ.get("TUNER_TEST_PGDATA")
        yield PgServer(url, Path(data) if data else None, owned=False)
        return
    try:
        server = PgServer.start()
    except (RuntimeError, OSError) as e:
        if os.environ.get("TUNER_REQUIRE_PG") == "1":
            pytest.fail(f"PostgreSQL is required here (TUNER_REQUIRE_PG=1) but could not start: {e}")
        pytest.skip(f"no PostgreSQL server for the scale-out tests: {e}")
    try:
        yield server
    finally:
        server.stop()
