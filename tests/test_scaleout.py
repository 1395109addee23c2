"""Scale-out with real components: worker processes of `tuner tune` on one PostgreSQL study, an
`mlflow server`, and the failures around them (a worker killed, the database restarted, passwords).

The PostgreSQL server is the one `.ci/run` started (TUNER_TEST_PG_URL), else a throw-away one
(`.ci/postgres`); the restart test always starts its own.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import optuna
import pytest
import yaml
from conftest import GFPGAN_OVERRIDES, SRVGG_OVERRIDES
from helpers import PG_SCRIPT, PgServer

IMAGES = ["A02_usnavy_grace_hopper.jpg", "A13_flickr_ccby_05.jpg", "A19_flickr_ccby_26.jpg"]
pytestmark = pytest.mark.slow


@pytest.fixture()
def portraits(copy_portraits):
    return copy_portraits(IMAGES, "portraits")


def _args(tiny_weights, portraits, name, storage, *extra):
    return ["tune", "experiment=nr", f"study.name={name}", f"study.storage={storage}", f"weights_dir={tiny_weights}",
            f"dataset.path={portraits}", "dataset.max_side=64", "study.n_startup_trials=2",
            "study.pruner.n_startup_steps=2", "study.allow_infeasible=true", *SRVGG_OVERRIDES, *GFPGAN_OVERRIDES,
            *extra]


def _spawn(args, cwd, env_extra=None, n=1):
    """Worker processes writing to log files (not pipes: a worker blocked on a full pipe while it
    holds the study lock would stall the others)."""
    env = dict(os.environ, TUNER_CACHE_DIR=str(cwd / "cache"), **(env_extra or {}))
    env.pop("TUNER_WEIGHTS_DIR", None)
    procs = []
    for _ in range(n):
        log = cwd / f"worker-{uuid.uuid4().hex[:8]}.log"
        with open(log, "w") as f:
            p = subprocess.Popen([sys.executable, "-m", "tuner.cli", *args], cwd=cwd, env=env, stdout=f,
                                 stderr=subprocess.STDOUT, text=True)
        p.log = log
        procs.append(p)
    return procs


def _wait_all(procs, timeout=600):
    """(returncode, output) of each; every process is killed if one overruns."""
    deadline = time.time() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(deadline - time.time(), 1))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(p.returncode, p.log.read_text()) for p in procs]


def _trials(url, name):
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def _poll(url, name, until, timeout=240):
    """Trials of the study once ``until(trials)`` holds (the study may not exist yet at first)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            ts = _trials(url, name)
        except Exception:  # noqa: BLE001 - not created yet
            ts = []
        if ts and until(ts):
            return ts
        time.sleep(0.1)
    raise AssertionError(f"study {name} never reached the expected state")


def _done(ts):
    return [t for t in ts if t.state.name in ("COMPLETE", "PRUNED")]


def test_three_workers_on_postgres_reach_exactly_n_trials(tmp_path, pg_server, tiny_weights, portraits):
    study_url, mlflow_url = pg_server.database("sc_study"), pg_server.database("sc_mlflow")
    n = 9
    procs = _spawn(_args(tiny_weights, portraits, "pg3", study_url, f"study.n_trials={n}",
                         f"tracking.uri={mlflow_url}"), tmp_path, n=3)
    outs = _wait_all(procs)
    for rc, out in outs:
        assert rc == 0, out[-3000:]
    ts = _trials(study_url, "pg3")
    assert len(_done(ts)) == n and len(ts) == n, [t.state.name for t in ts]  # exact: no overshoot, no failure
    # the workers really shared the work (a worker that starts late may find little left, so not
    # all three are required to have run a trial)
    assert len({t.user_attrs["worker"] for t in ts}) >= 2
    assert all(t.user_attrs["claimed"] == t.number for t in ts)
    # no two trials with the same parameters (every knob but tile is continuous: a repeat means two
    # workers drew from one random sequence)
    sets = [tuple(sorted((k, round(v, 9) if isinstance(v, float) else v) for k, v in t.params.items())) for t in ts]
    assert len(set(sets)) == n, collections.Counter(sets).most_common(2)
    assert sum(bool(t.user_attrs.get("baseline")) for t in ts) == 1

    # every trial in MLflow exactly once, nested under the one study run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_url)
    exp = client.get_experiment_by_name("tuner")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    studies = [r for r in runs if r.data.tags.get("tuner.kind") == "study"]
    trials = [r for r in runs if r.data.tags.get("tuner.kind") == "trial"]
    assert len(studies) == 1
    counts = collections.Counter(int(r.data.tags["tuner.trial"]) for r in trials)
    assert counts == collections.Counter(t.number for t in ts)
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {studies[0].info.run_id}

    # one result: every worker names the same best trial, and the study's MLflow run gets it once
    # (each worker writes the same preset beside it; here they share one run folder)
    preset = yaml.safe_load((tmp_path / "runs" / "pg3" / "best_preset.yaml").read_text())
    best = [line.split("best trial: ")[1].split()[0] for _, out in outs for line in out.splitlines()
            if "best trial: " in line]
    assert best == [str(preset["provenance"]["trial"])] * 3
    assert len(client.get_metric_history(studies[0].info.run_id, "best_value")) == 1
    assert studies[0].data.tags["best_trial"] == best[0]
    assert [a.path for a in client.list_artifacts(studies[0].info.run_id)] == ["best_preset.yaml"]


def test_a_worker_killed_on_postgres_has_its_trial_failed_and_requeued(tmp_path, pg_server, tiny_weights, portraits):
    url = pg_server.database("sc_kill")
    n = 6
    args = _args(tiny_weights, portraits, "pgk", url, f"study.n_trials={n}", "study.heartbeat.interval=1",
                 "study.heartbeat.grace_period=3", "tracking=none", "study.pruner.enabled=false")
    victim, survivor = _spawn(args, tmp_path, n=2)

    def victims_running(ts):  # inside a trial: claimed by the victim and its parameters drawn (claim comes first)
        return [t.number for t in ts if t.state.name == "RUNNING" and t.params
                and t.user_attrs.get("worker", "").endswith(f":{victim.pid}")]

    running = []
    try:
        for _ in range(20):  # stopped between two trials: let it go on, and catch it inside the next one
            _poll(url, "pgk", lambda ts: len(_done(ts)) >= 1 and victims_running(ts))
            victim.send_signal(signal.SIGSTOP)  # frozen, then looked at: it cannot finish the trial in between
            running = victims_running(_trials(url, "pgk"))
            if running:
                break
            victim.send_signal(signal.SIGCONT)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    [killed] = running
    [(rc, out)] = _wait_all([survivor])
    assert rc == 0, out[-3000:]
    ts = _trials(url, "pgk")
    states = collections.Counter(t.state.name for t in ts)
    assert states == {"COMPLETE": n, "FAIL": 1}, states
    failed = next(t for t in ts if t.state.name == "FAIL")
    assert failed.number == killed
    # re-queued by RetryHeartbeatStaleTrialCallback: the parameters the victim had drawn ran again, to
    # completion. It may have been frozen part-way through drawing them: those it had not drawn yet are
    # drawn afresh by the retry, so the failed trial's are a subset of the retry's, value for value.
    retry = [t for t in ts if t.system_attrs.get("failed_trial") == killed]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE", retry
    assert failed.params and failed.params.items() <= retry[0].params.items(), (failed.params, retry[0].params)


def test_database_restart_mid_study(tmp_path, tiny_weights, portraits):
    try:
        server = PgServer.start()  # its own server: it is stopped and restarted here
    except (RuntimeError, OSError) as e:
        if os.environ.get("TUNER_REQUIRE_PG") == "1":
            pytest.fail(f"PostgreSQL could not start: {e}")
        pytest.skip(f"no PostgreSQL: {e}")
    try:
        url = server.database("restart")
        common = ["study.heartbeat.interval=1", "study.heartbeat.grace_period=30", "tracking=none",
                  "study.pruner.enabled=false"]

        # 1. a short outage (3 s): both workers retry and go on to exactly n_trials
        n = 8
        procs = _spawn(_args(tiny_weights, portraits, "rs", url, f"study.n_trials={n}", *common), tmp_path, n=2)
        before = _poll(url, "rs", lambda ts: len(_done(ts)) >= 2)
        before = {t.number: t.values for t in before if t.state.name == "COMPLETE"}
        server.restart(down_s=3)
        outs = _wait_all(procs)
        for rc, out in outs:
            assert rc == 0, out[-3000:]
            assert "unreachable" in out  # every worker saw the outage (its heartbeat at least) ...
        assert any("retrying in" in out for _, out in outs)  # ... and a storage call was retried through it
        ts = _trials(url, "rs")
        assert len(_done(ts)) == n, [(t.number, t.state.name) for t in ts]
        # no trial failed by the outage; the only failures allowed are trials asked in the very moment
        # the connection dropped, recovered (failed, re-queued) as never claimed
        assert all(t.user_attrs.get("reason", "").startswith("never claimed") for t in ts if t.state.name == "FAIL")
        assert all(next(t for t in ts if t.number == k).values == v for k, v in before.items())  # nothing lost

        # 2. an outage longer than study.storage_retry_s: a clear error (exit 1), then a resume
        args = _args(tiny_weights, portraits, "rs", url, "study.n_trials=14", "study.storage_retry_s=4", *common)
        [p] = _spawn(args, tmp_path)
        _poll(url, "rs", lambda ts: len(_done(ts)) >= n + 1)
        done_before = {t.number for t in _done(_trials(url, "rs"))}
        subprocess.run([str(PG_SCRIPT), "halt", str(server.folder)], check=True, timeout=120)
        [(rc, out)] = _wait_all([p])
        assert rc == 1, out[-3000:]
        assert "unreachable for over 4 s" in out and "run the same command again to resume" in out
        assert "Traceback" not in out
        subprocess.run([str(PG_SCRIPT), "resume", str(server.folder)], check=True, timeout=120)
        [(rc, out)] = _wait_all(_spawn(args, tmp_path))
        assert rc == 0, out[-3000:]
        ts = _trials(url, "rs")
        assert len(_done(ts)) == 14 and done_before <= {t.number for t in _done(ts)}
    finally:
        server.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_workers_log_to_an_mlflow_tracking_server(tmp_path, tiny_weights, portraits):
    port = _free_port()
    server_log = open(tmp_path / "mlflow-server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow-server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        cwd=tmp_path, stdout=server_log, stderr=subprocess.STDOUT, text=True)
    uri = f"http://127.0.0.1:{port}"
    secret = f"pw-{uuid.uuid4().hex[:10]}"  # basic-auth credentials in the URI (the server ignores them)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise AssertionError(f"mlflow server did not start: {(tmp_path / 'mlflow-server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        n = 6
        storage = f"sqlite:///{tmp_path / 'runs' / 'srv' / 'study.db'}"
        outs = _wait_all(_spawn(_args(tiny_weights, portraits, "srv", storage, f"study.n_trials={n}"), tmp_path,
                                env_extra={"MLFLOW_TRACKING_URI": uri.replace("://", f"://tuner:{secret}@")}, n=2))
        for rc, out in outs:
            assert rc == 0 and "MLflow" not in out, out[-3000:]  # no tracking failure reported
            assert secret not in out and "View run" not in out
        ts = _trials(storage, "srv")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("tuner")
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        [parent] = [r for r in runs if r.data.tags.get("tuner.kind") == "study"]
        trials = [r for r in runs if r.data.tags.get("tuner.kind") == "trial"]
        assert sorted(int(r.data.tags["tuner.trial"]) for r in trials) == sorted(t.number for t in ts)
        by_number = {t.number: t for t in ts}
        for r in trials:  # complete nested runs: parent, status, metrics, artifacts on the server
            t = by_number[int(r.data.tags["tuner.trial"])]
            assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert r.info.status == "FINISHED" and r.data.tags["state"] == t.state.name
            assert "seconds" in r.data.metrics and set(r.data.params) == set(t.params)
            assert "metrics.csv" in {a.path for a in client.list_artifacts(r.info.run_id)}
        assert "best_preset.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert any((tmp_path / "server-artifacts").rglob("metrics.csv"))  # stored by the server, not locally
        assert not (tmp_path / "runs" / "srv" / "mlflow.db").exists()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()


def test_passwords_in_storage_urls_never_leave_the_url(tmp_path, pg_server, tiny_weights, portraits, run_cli):
    secret = f"pw-{uuid.uuid4().hex[:12]}"
    url = pg_server.database("sc_secret").replace("tuner@", f"tuner:{secret}@")  # trust auth ignores it
    r = run_cli(*_args(tiny_weights, portraits, "sec", url, "study.n_trials=2"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tuner:***@" in r.stdout + r.stderr  # the summary names the storage, masked
    outs = [r.stdout + r.stderr]
    for cmd in (["report", "study.name=sec", f"study.storage={url}", f"out={tmp_path / 'report'}"],
                ["export", "study.name=sec", f"study.storage={url}", f"out={tmp_path / 'p.yaml'}",
                 "allow_infeasible=true"]):
        r = run_cli(*cmd, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(r.stdout + r.stderr)
    # a bad URL's error message is masked too
    bad = url.rsplit("/", 1)[0] + "/no_such_db"
    r = run_cli(*_args(tiny_weights, portraits, "sec2", bad, "study.n_trials=1", "study.storage_retry_s=0"),
                cwd=tmp_path)
    assert r.returncode != 0 and "no_such_db" in r.stderr
    outs.append(r.stdout + r.stderr)
    assert not [o for o in outs if secret in o]
    # logs, summary, config.yaml, mlflow.db (params, tags), artifacts, the report, the preset
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "cache" not in p.parts and "portraits" not in p.parts]
    assert (tmp_path / "runs" / "sec" / "config.yaml").exists() and (tmp_path / "runs" / "sec" / "mlflow.db").exists()
    assert not [p for p in files if secret.encode() in p.read_bytes()]
    assert not (tmp_path / "runs" / "sec" / ".hydra").exists()
    # and the study's own records in the database
    study = optuna.load_study(study_name="sec", storage=url)
    assert secret not in repr(study.user_attrs) + repr([t.user_attrs for t in study.trials])


# Runs `tuner tune` under an address-space limit of this many MiB above what the process maps
# after a first, unlimited one-trial study (which loads every library the work needs: their
# mappings are not the work's).  glibc's per-thread arenas and torch's thread pool would map
# memory unrelated to the work, so both are held to one.
_LIMITED = """
import resource, sys
import torch
torch.set_num_threads(1)
import tuner.cli
margin, warm, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
if tuner.cli.main([*args, f"study.name={warm}", "study.n_trials=1"]) != 0:
    sys.exit("the unlimited warm-up study failed")
vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + margin * 2**20, vm + margin * 2**20))
sys.exit(tuner.cli.main(args))
"""


def test_out_of_memory_on_a_tile_fails_that_trial_and_the_study_goes_on(tmp_path, copy_portraits):
    """A real allocation failure: RealESRGAN_x4plus's architecture (one RRDB block, random weights)
    on a 256 x 175 input needs ~700 MB more for the whole image (its 4x upsampling convolutions
    hold 64-channel maps of the output size), ~550 MB for a 192 px tile, a few MB for a 32 px one;
    the limit allows 300 MB."""
    from conftest import declare_weights, tiny_state_dict

    weights = tmp_path / "w"
    weights.mkdir()
    arch = {"type": "RRDBNet", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_block": 1, "num_grow_ch": 32,
            "scale": 4}
    import torch

    torch.save(tiny_state_dict(arch, 5, "params_ema"), weights / "RealESRGAN_x4plus.pth")
    declare_weights(weights, "one-block random stand-in (tests/test_scaleout.py)")
    portraits = copy_portraits(["A13_flickr_ccby_05.jpg"], "one")
    n = 5
    args = ["tune", "experiment=nr", "study.name=oom", f"weights_dir={weights}", f"dataset.path={portraits}", "dataset.max_side=256",
            "model=RealESRGAN_x4plus", "model.arch.num_block=1", "face=none", "~search.params.face_weight",
            "params.tile=32", "search.params.tile.choices=[32,192]", f"study.n_trials={n}", "study.n_startup_trials=8",
            "study.pruner.enabled=false", "study.score_threads=1", "tracking=none", "study.allow_infeasible=true",
            "study.max_consecutive_failures=10"]
    env = dict(os.environ, TUNER_CACHE_DIR=str(tmp_path / "cache"), MALLOC_ARENA_MAX="1", OMP_NUM_THREADS="1")
    env.pop("TUNER_WEIGHTS_DIR", None)
    r = subprocess.run([sys.executable, "-c", _LIMITED, "300", "oom-warm-up", *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    ts = _trials(f"sqlite:///{tmp_path / 'runs' / 'oom' / 'study.db'}", "oom")
    failed = [t for t in ts if t.state.name == "FAIL"]
    done = _done(ts)
    assert len(done) == n and failed, [(t.params, t.state.name) for t in ts]
    # every trial with 192 px tiles ran out of memory on its first tile and said so; no 32 px one did
    assert all(t.params["tile"] == 192 for t in failed) and all(t.params["tile"] == 32 for t in done)
    assert all("out of memory upscaling tile (x=0, y=0)" in t.user_attrs["reason"] for t in failed)
    assert "smaller params.tile" in out and (tmp_path / "runs" / "oom" / "best_preset.yaml").exists()
