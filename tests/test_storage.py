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


def _settings(url, **kw):
    from tuner.storage import StudySettings

    return StudySettings(**{"name": "s", "n_trials": 1, "storage": url, "sampler": "tpe", "seed": 0,
                            "n_startup_trials": 1, "pruner": False, "p_threshold": 0.1, "n_startup_steps": 1,
                            "heartbeat_interval": 1, "grace_period": 2, "max_retry": 1, "strict": False,
                            "allow_infeasible": False, "max_consecutive_failures": 1, "max_failures": 1,
                            "storage_retry_s": 0, **kw})


def test_a_missing_postgres_driver_names_the_extra_and_masks_the_password(monkeypatch):
    import pytest

    from tuner.errors import ConfigError
    from tuner.storage import make_storage

    monkeypatch.setitem(__import__("sys").modules, "psycopg", None)  # as if psycopg were not installed
    with pytest.raises(ConfigError) as e:
        make_storage(_settings("postgresql://u:hunter2@127.0.0.1:1/db"))
    assert "pip install 'tuner[postgres]'" in str(e.value) and "hunter2" not in str(e.value)


def test_storage_calls_are_retried_through_an_outage_then_give_up_clearly():
    import pytest

    from tuner.storage import StorageLost, retrying

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 2:
            raise optuna.exceptions.StorageInternalError("server closed the connection unexpectedly")
        return "ok"

    assert retrying(flaky, what="ask", seconds=30) == "ok" and len(calls) == 2

    def down():
        raise optuna.exceptions.StorageInternalError("connection to postgresql://u:hunter2@h/db refused")

    with pytest.raises(StorageLost) as e:
        retrying(down, what="telling trial 3", seconds=0.5)
    msg = str(e.value)
    assert "telling trial 3" in msg and "run the same command again to resume" in msg and "hunter2" not in msg
    with pytest.raises(ValueError):  # anything else is not an outage: no retry, no masking of bugs
        retrying(lambda: int("x"), what="ask", seconds=30)


def test_the_study_lock_kind_follows_the_storage(tmp_path, caplog):
    from tuner.storage import StudyLock

    assert StudyLock(f"sqlite:///{tmp_path / 's.db'}", "a").kind == "file"
    assert StudyLock(f"journal://{tmp_path / 'j.log'}", "a").kind == "file"
    assert StudyLock("postgresql://u@h/db", "a").kind == "postgres"
    a, b = StudyLock("postgresql://u@h/db", "a"), StudyLock("postgresql://u@h/db", "b")
    assert a.key != b.key and a.key == StudyLock("postgresql://other@h2/db", "a").key  # per study name
    with caplog.at_level("WARNING"):
        assert StudyLock("mysql://u:pw@h/db", "a").kind == "none"
    assert "overshoot" in caplog.text and "pw@" not in caplog.text


def test_a_trial_asked_but_never_claimed_is_failed_and_requeued(tmp_path):
    """A worker killed between ask and its claim (first beat + worker attributes) leaves a RUNNING
    trial that optuna's heartbeat check never fails: the next worker under the lock does."""
    from tuner.storage import recover_orphans

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=60, grace_period=120)
    study = optuna.create_study(study_name="o", storage=storage)
    claimed = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    claimed.set_user_attr("claimed", claimed.number)
    orphan = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    # a re-queued copy carries its original's attributes: "claimed" must name this very trial
    stale_copy = study.ask()
    stale_copy.set_user_attr("claimed", 0)
    recover_orphans(study, storage, max_retry=2)
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert states[claimed.number] == "RUNNING"
    assert states[orphan.number] == "FAIL" and states[stale_copy.number] == "FAIL"
    copies = [t for t in study.get_trials(deepcopy=False) if t.state.name == "WAITING"]
    assert sorted(t.system_attrs["failed_trial"] for t in copies) == [orphan.number, stale_copy.number]
    assert next(t for t in copies if t.system_attrs["failed_trial"] == orphan.number).params == orphan.params


def test_a_result_told_after_the_trial_was_failed_as_stale_is_dropped(tmp_path):
    from optuna.trial import TrialState

    from tuner.trials import tell

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="t", storage=storage)
    stale, mine = study.ask(), study.ask()
    sid = storage.get_study_id_from_name("t")
    storage.set_trial_state_values(storage.get_trial_id_from_study_id_trial_number(sid, stale.number), TrialState.FAIL)
    assert tell(study, stale, TrialState.COMPLETE, [1.0], retry_s=0) is False  # another worker failed it
    assert tell(study, mine, TrialState.COMPLETE, [2.0], retry_s=0) is True
    assert tell(study, mine, TrialState.COMPLETE, [2.0], retry_s=0) is True  # a retried tell that had landed
    failed = study.ask()  # a trial failed here (run_trial passes the NaN objective values along; a FAIL ignores them)
    assert tell(study, failed, TrialState.FAIL, [float("nan")], retry_s=0) is True


def test_the_postgres_study_lock_excludes_other_workers(pg_server):
    import threading

    from tuner.storage import StudyLock

    url = pg_server.database("lock_test")
    inside, overlap = [], []
    gate = threading.Lock()

    def worker(i):
        lock = StudyLock(url, "s")
        for _ in range(5):
            with lock():
                with gate:
                    if inside:
                        overlap.append(i)
                    inside.append(i)
                time.sleep(0.02)
                with gate:
                    inside.remove(i)
        lock.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlap == []
    # a different study's lock is not held up by this one
    a, b = StudyLock(url, "s"), StudyLock(url, "other")
    with a(), b():
        pass
    a.close()
    b.close()
