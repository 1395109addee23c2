"""Study storage and its settings: the Optuna storage URL, the local lock, heartbeats.

Optuna's heartbeat thread lives in the private ``optuna.storages._heartbeat``:
``Study.optimize`` starts it internally, but the worker loop needs ask/tell (to hold a lock
around ``ask``), so it is reached here, in :func:`heartbeat`, and nowhere else.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class StudySettings:
    name: str
    n_trials: int
    storage: str
    sampler: str
    seed: int
    n_startup_trials: int
    pruner: bool
    p_threshold: float
    n_startup_steps: int
    heartbeat_interval: int
    grace_period: int
    max_retry: int
    strict: bool
    allow_infeasible: bool
    max_consecutive_failures: int
    max_failures: int
    score_threads: int = 1


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_study_name(name: str) -> str:
    """A study name is also a folder name under runs/: refuse anything that could leave it."""
    if not _NAME_RE.fullmatch(name) or ".." in name:
        raise ConfigError(f"study.name must be 1-128 characters of letters, digits, '.', '_' or '-' (starting with a "
                          f"letter or digit, no '..'), got {name!r}")
    return name


def make_storage(st: StudySettings) -> Any:
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = st.storage
    if url.startswith("journal://"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = url[len("journal://"):]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise ConfigError(f"study.storage must be a URL (sqlite:///file.db, postgresql://..., journal:///path), got {url!r}")
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}
        Path(url.split("///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
    try:
        return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=st.heartbeat_interval,
                          grace_period=st.grace_period,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=st.max_retry))
    except (optuna.exceptions.StorageInternalError, ImportError, ValueError) as e:
        raise ConfigError(f"cannot open study.storage={redact_url(url)}: {redact_url(str(e))}") from e


def storage_lock_path(url: str) -> Path | None:
    """A lock file beside a local storage file (every process on this machine finds the same one);
    None for server storages, where the count can overshoot by (workers - 1)."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):] + ".lock")
    if url.startswith("journal://"):
        return Path(url[len("journal://"):] + ".lock")
    return None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def heartbeat_enabled(storage: Any) -> bool:
    """Whether the storage fails the trials of silent workers (RDB storages built with an interval;
    ``get_heartbeat_interval`` is RDBStorage's public method)."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and interval() is not None


def _trial_id(storage: Any, study: Any, trial: Any) -> int:
    return int(storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                               trial.number))


def first_beat(storage: Any, study: Any, trial: Any) -> None:
    """Record ``trial``'s first heartbeat at once (``RDBStorage.record_heartbeat``, public), right
    after ``ask``: optuna fails a silent worker's trial only once it has beaten, so a worker killed
    between ``ask`` and its heartbeat thread's first beat would leave a trial RUNNING that nothing
    ever fails, and every other worker waiting for it forever."""
    storage.record_heartbeat(_trial_id(storage, study, trial))


def heartbeat(storage: Any, study: Any, trial: Any) -> Any:
    """A context that beats for ``trial`` while it runs.  Optuna's only private API in tuner:
    ``Study.optimize`` starts this thread itself, but ask/tell has no public way to."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(_trial_id(storage, study, trial), storage)


def redact_url(url: str) -> str:
    """A storage URL with any password replaced by ***, for logs and summaries."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)
