"""MLflow tracking: a tracking failure is reported once and the study goes on, neither stalled nor
losing later records to a failed setup; a bug is not swallowed."""

from __future__ import annotations

import logging
import os
import sqlite3
import time

import pytest

from tuner.tracking import HTTP_DEFAULTS, Tracker


def test_an_unreachable_store_is_reported_once(tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where MLflow wants a folder")
    t = Tracker(enabled=True, uri=f"file://{blocker}/mlruns", experiment="e")
    with caplog.at_level(logging.WARNING):
        assert t.start_study(None, name="s", params={}, tags={}) is None
        t.log_trial(None, number=0, params={}, metrics={"x": 1.0}, tags={}, artifacts=[], status="COMPLETE")
    assert t.failures == 2
    assert sum("MLflow" in r.message for r in caplog.records) == 1  # warned once, with the reason


def test_a_bug_in_the_tracking_code_is_not_swallowed(tmp_path):
    t = Tracker(enabled=True, uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="e")
    parent = t.start_study(None, name="s", params={"a": 1}, tags={})
    assert parent
    with pytest.raises(ValueError):  # a metric that is not a number is tuner's bug, not MLflow's outage
        t.log_trial(parent, number=0, params={}, metrics={"x": "not a number"}, tags={}, artifacts=[],  # type: ignore[dict-item]
                    status="COMPLETE")
    assert t.failures == 0


def test_a_failed_experiment_lookup_is_retried_and_trials_land_in_the_experiment(tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    real_lookup = MlflowClient.get_experiment_by_name
    calls = []

    def flaky_lookup(self, name):
        calls.append(name)
        if len(calls) == 1:
            raise MlflowException("the tracking store is busy")  # one transient failure at setup
        return real_lookup(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", flaky_lookup)
    db = tmp_path / "mlflow.db"
    t = Tracker(enabled=True, uri=f"sqlite:///{db}", experiment="e", artifact_dir=tmp_path / "art")
    assert t.start_study(None, name="s", params={}, tags={}) is None  # lost, reported, counted
    parent = t.start_study(None, name="s", params={}, tags={})  # setup retried
    assert parent
    for n in range(3):
        t.log_trial(parent, number=n, params={"a": n}, metrics={"x": float(n)}, tags={}, artifacts=[],
                    status="COMPLETE")
    assert t.failures == 1
    monkeypatch.undo()
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("e")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["tuner.kind"] for r in runs) == ["study", "trial", "trial", "trial"]
    with sqlite3.connect(db) as con:  # no run outside an experiment (invisible in the UI)
        assert con.execute("SELECT count(*) FROM runs WHERE experiment_id IS NULL").fetchone()[0] == 0


@pytest.fixture
def no_user_http_settings(monkeypatch):
    """MLflow's HTTP settings unset during the test and unset again after it (the tracker sets defaults)."""
    for name in HTTP_DEFAULTS:
        monkeypatch.setenv(name, "1")  # recorded as absent, so removed again at teardown
        monkeypatch.delenv(name)


def test_a_down_tracking_server_neither_stalls_nor_stops_the_study(no_user_http_settings, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's own setting is kept
    t = Tracker(enabled=True, uri="http://user:secret@127.0.0.1:9", experiment="e")  # port 9: refused
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert t.start_study(None, name="s", params={"a": 1}, tags={}) is None
        for n in range(5):
            t.log_trial(None, number=n, params={}, metrics={"x": 1.0}, tags={}, artifacts=[], status="COMPLETE")
        t.log_parent("run-id", metrics={"best_value": 1.0})
    assert time.monotonic() - start < 30  # a stall guard, not a benchmark: MLflow's defaults take ~4 min a call
    assert t.failures == 7  # every lost record counted
    warnings = [r.getMessage() for r in caplog.records if r.name == "tuner.tracking"]
    assert len(warnings) == 1, warnings
    assert "127.0.0.1:9" in warnings[0] and "untracked" in warnings[0] and "secret" not in warnings[0]
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]


def test_only_a_server_that_cannot_be_reached_turns_tracking_off():
    """A refused or unconnectable server stops the tracker's calls; a slow read (an artifact upload past
    the timeout, the server there) is an ordinary, counted failure, so tracking goes on."""
    import requests.exceptions as r
    from urllib3.exceptions import MaxRetryError, NewConnectionError, ReadTimeoutError

    from tuner.tracking import is_unreachable

    assert is_unreachable(ConnectionRefusedError()) and is_unreachable(r.ConnectTimeout("x"))
    assert is_unreachable(r.ConnectionError(MaxRetryError(None, "/api", NewConnectionError(None, "refused"))))
    assert not is_unreachable(r.ReadTimeout("x"))
    assert not is_unreachable(r.ConnectionError(MaxRetryError(None, "/api", ReadTimeoutError(None, "/api", "slow"))))
    wrapped = RuntimeError("mlflow")  # MLflow wraps the network error: the chain is searched
    wrapped.__cause__ = ConnectionRefusedError()
    assert is_unreachable(wrapped)
