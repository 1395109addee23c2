"""The stage cache under faults: entries damaged on disk (checksum), and a folder that is full or
read-only (the run goes on uncached, with one warning)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import SRVGG_OVERRIDES, TINY_SRVGG

from tuner.cache import StageCache
from tuner.images import Image, from_array
from tuner.pipeline import Params, Pipeline, PipelineSpec
from tuner.weights import ModelSpec, WeightStore


def _entry(cache: StageCache) -> Path:
    [p] = list(cache.root.rglob("*.npz"))
    return p


def test_a_flipped_bit_is_caught_by_the_checksum_and_recomputed(tmp_path, caplog):
    cache = StageCache(tmp_path)
    arr = np.arange(4096, dtype=np.float32)
    cache.put("sr", "ab" * 32, {"rgb": arr})
    p = _entry(cache)
    data = bytearray(p.read_bytes())
    # inside the array's bytes: the zip container still parses, only the checksum can tell
    at = data.index(arr[1000:1002].tobytes())
    data[at] ^= 0x01
    p.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="tuner.cache"):
        assert cache.get("sr", "ab" * 32) is None
    assert cache.corrupt == 1 and not p.exists()
    assert "corrupt entry" in caplog.text and "checksum mismatch" in caplog.text
    cache.put("sr", "ab" * 32, {"rgb": arr})  # recomputed and stored again
    assert np.array_equal(cache.get("sr", "ab" * 32)["rgb"], arr)


def test_the_pipeline_recomputes_a_corrupt_entry_to_the_same_output(tiny_weights, tmp_path):
    spec = PipelineSpec(model=ModelSpec.from_mapping({"name": "realesr-general-x4v3", "arch": TINY_SRVGG,
                                                      "key": "params"}))
    img = from_array(np.random.default_rng(0).random((24, 20, 3), dtype=np.float32))
    cache = StageCache(tmp_path / "c")
    first = Pipeline(spec, store=WeightStore(weights_dir=tiny_weights), cache=cache).run(img, Params())
    p = next((tmp_path / "c").rglob("sr/*/*.npz"))
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    again = Pipeline(spec, store=WeightStore(weights_dir=tiny_weights), cache=cache).run(img, Params())
    assert again.cached["sr"] is False and cache.corrupt == 1  # detected, so the network ran again
    assert again.image.rgb.tobytes() == first.image.rgb.tobytes()
    assert isinstance(again.image, Image)


@contextlib.contextmanager
def _tmpfs(path: Path, *opts: str, fallback=None):
    """A real small or read-only file system (a tmpfs mount, as root); where mounting is not
    allowed, ``fallback()`` (a context that simulates it) or a skip."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(opts), "tmpfs", str(path)], capture_output=True,
                       text=True) if os.geteuid() == 0 else None
    if r is None or r.returncode != 0:
        if fallback is None:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() if r else 'not root'}")
        with fallback():
            yield path
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("opts", [("size=64k",), ("ro", "size=1m")], ids=["full", "read-only"])
def test_an_unwritable_cache_warns_once_and_goes_on(tmp_path, caplog, opts, monkeypatch):
    code = errno.EROFS if "ro" in opts else errno.ENOSPC

    @contextlib.contextmanager
    def simulated():  # no mount allowed (an unprivileged container): the same error from the write
        def fail(path, data):
            raise OSError(code, os.strerror(code), str(path))

        with monkeypatch.context() as m:
            m.setattr("tuner.cache.atomic_write_bytes", fail)
            yield

    with _tmpfs(tmp_path / f"mnt-{uuid.uuid4().hex[:6]}", *opts, fallback=simulated) as root:
        cache = StageCache(root)
        big = {"rgb": np.random.default_rng(0).random((64, 64, 8))}  # 256 KB: over the 64 KB file system
        with caplog.at_level(logging.WARNING, logger="tuner.cache"):
            for i in range(3):
                cache.put("sr", f"{i:064x}", big)
        assert cache.write_error is not None and caplog.text.count("going on uncached") == 1
        assert cache.get("sr", f"{0:064x}") is None
        if os.path.ismount(root):  # on the real file system: no half-written entry left behind
            assert not [p for p in root.rglob("*") if p.is_file()]


@pytest.mark.slow
def test_a_study_with_a_full_cache_folder_goes_on_uncached(tmp_path, tiny_weights, copy_portraits, run_cli):
    portraits = copy_portraits(["A02_usnavy_grace_hopper.jpg", "A13_flickr_ccby_05.jpg"], "p")
    with _tmpfs(tmp_path / "fullcache", "size=64k") as root:
        r = run_cli("tune", "experiment=nr", "study.name=fc", f"weights_dir={tiny_weights}", f"dataset.path={portraits}",
                    "dataset.max_side=64", "study.n_trials=3", "study.n_startup_trials=2", "tracking=none",
                    "study.allow_infeasible=true", "face=none", "~search.params.face_weight", *SRVGG_OVERRIDES,
                    cwd=tmp_path, env={"TUNER_CACHE_DIR": str(root)})
        assert r.returncode == 0, r.stderr[-3000:]
        out = r.stdout + r.stderr
        assert out.count("going on uncached") == 1 and "No space left on device" in out
        assert (tmp_path / "runs" / "fc" / "best_preset.yaml").exists()
