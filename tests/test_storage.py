"""Heartbeats: a trial whose worker dies right after ``ask`` must still be failed and re-queued."""

from __future__ import annotations

import time

import optuna

from tuner.storage import first_beat


def test_a_trial_whose_worker_died_before_its_heartbeat_thread_is_still_failed(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="hb", storage=storage)
    beaten, silent = study.ask(), study.ask()
    first_beat(storage, study, beaten)  # what tuner's worker does under its lock, right after ask
    time.sleep(2.5)  # both workers "died": no heartbeat thread ever ran
    optuna.storages.fail_stale_trials(study)
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert states[beaten.number] == "FAIL"
    # the race first_beat closes: optuna never fails a trial that has not beaten once
    assert states[silent.number] == "RUNNING"
