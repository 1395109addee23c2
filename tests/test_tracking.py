"""MLflow tracking: a tracking failure is reported once and the study goes on; a bug is not swallowed."""

from __future__ import annotations

import logging

import pytest

from tuner.tracking import Tracker


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
