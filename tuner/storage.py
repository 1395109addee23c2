"""Study storage and its settings: the Optuna storage URL, the study lock, heartbeats, retries.

The worker loop drives Optuna with ask/tell (it holds a lock around "count, then ask"), so it
beats for its trial itself (:class:`Heartbeat`, through RDBStorage's public ``record_heartbeat``)
and retries storage calls while a database server restarts (:func:`retrying`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, TunerError

log = logging.getLogger(__name__)


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
    storage_retry_s: float = 120.0  # how long a worker retries an unreachable storage before it stops


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
        raise ConfigError(f"study.storage must be a URL (sqlite:///file.db, postgresql://..., journal:///path), "
                          f"got {redact_url(url)!r}")
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}
        Path(url.split("///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
    elif url.startswith(("postgresql", "postgres:")):
        url = pg_url(url)
        # a restarted server's dead connections are replaced, not used; a dead host is found in seconds
        kwargs = {"pool_pre_ping": True, "connect_args": PG_CONNECT_ARGS}
    try:
        return retrying(lambda: RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=st.heartbeat_interval,
                                           grace_period=st.grace_period,
                                           heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                               max_retry=st.max_retry)),
                        what="opening the study storage", seconds=st.storage_retry_s)
    except ImportError as e:
        hint = " (install the driver: pip install 'tuner[postgres]')" if url.startswith("postgresql") else ""
        raise ConfigError(f"cannot open study.storage={redact_url(url)}: no database driver{hint}: {e}") from e
    except (optuna.exceptions.StorageInternalError, ValueError) as e:
        raise ConfigError(f"cannot open study.storage={redact_url(url)}: {redact_url(str(e))}") from e


# libpq options for every PostgreSQL connection: a connect attempt gives up after 10 s, and TCP
# keepalives on both ends find a peer that vanished (a dead host, a cut network) in about a
# minute, not hours
PG_CONNECT_ARGS = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                   "keepalives_count": 3,
                   # the server's side of the same: a worker whose host vanished while it held the study
                   # lock is found, and its session (and the lock) ended, in about a minute too
                   "options": "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3"}
# the longest a worker waits for the study lock before it counts as an outage (and is retried)
LOCK_TIMEOUT_S = 60


def pg_url(url: str) -> str:
    """``postgresql://`` with the psycopg 3 driver named: SQLAlchemy 2.0 would pick psycopg2 for a
    bare scheme (2.1 picks psycopg), and tuner declares psycopg (``pip install 'tuner[postgres]'``)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme):]
    return url


def storage_lock_path(url: str) -> Path | None:
    """A lock file beside a local storage file (every process on this machine finds the same one);
    None for server storages."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):] + ".lock")
    if url.startswith("journal://"):
        return Path(url[len("journal://"):] + ".lock")
    return None


class StudyLock:
    """One worker at a time in a study's critical sections ("count finished + running, then ask";
    creating the storage's tables), for every worker that can reach the storage:

    - local storages (SQLite, journal): a file lock beside the file;
    - PostgreSQL: a transaction-level advisory lock (``pg_advisory_xact_lock``) in the database
      itself, so workers on any number of machines count exactly; the server releases it when
      the transaction ends, also when a worker dies or the connection drops;
    - other servers (MySQL, ...): no lock; the trial count can overshoot by (workers - 1).
    """

    def __init__(self, url: str, key: str) -> None:
        self.path = storage_lock_path(url)
        self.url = url
        self.key = self.key_of(key)
        self._engine: Any = None
        self.kind = "file" if self.path else "postgres" if url.startswith(("postgresql", "postgres:")) else "none"
        if self.kind == "none":
            log.warning("study.storage=%s has no study lock in tuner (only SQLite, journal and PostgreSQL do): "
                        "with several workers the trial count can overshoot by (workers - 1)", redact_url(url))

    @staticmethod
    def key_of(name: str) -> int:
        """A signed 64-bit advisory-lock key, the same in every worker for the same name."""
        return int.from_bytes(hashlib.sha256(f"tuner:{name}".encode()).digest()[:8], "big", signed=True)

    @contextlib.contextmanager
    def __call__(self, scope: str | None = None) -> Iterator[None]:
        """Hold the lock of this study, or of ``scope`` (e.g. creating the storage's tables, which
        any study's workers may race on).  One file serves every scope on local storages."""
        if self.path is not None:
            with file_lock(self.path):
                yield
            return
        if self.kind != "postgres":
            yield
            return
        import sqlalchemy as sa

        if self._engine is None:
            self._engine = sa.create_engine(pg_url(self.url), pool_pre_ping=True, pool_size=1, max_overflow=1,
                                            connect_args=PG_CONNECT_ARGS)
        with self._engine.begin() as conn:  # commit (or rollback) releases the lock
            # a holder that never lets go (a hung host) is an outage after LOCK_TIMEOUT_S, not a hang
            conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'"))
            key = self.key if scope is None else self.key_of(scope)
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
            yield

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


_LAST_OUTAGE = [-float("inf")]  # time.monotonic() of the last storage error this process saw


def note_outage() -> None:
    _LAST_OUTAGE[0] = time.monotonic()


def outage_within(seconds: float) -> bool:
    """Whether this process saw the storage unreachable in the last ``seconds``: then other
    workers' heartbeats may have lapsed too, and their live trials must not be failed as stale
    before those workers had a chance to beat again."""
    return time.monotonic() - _LAST_OUTAGE[0] < seconds


class StorageLost(TunerError):
    """The study storage stayed unreachable for longer than ``study.storage_retry_s``."""


def storage_errors() -> tuple[type[BaseException], ...]:
    """What an unreachable or restarting database server raises through Optuna or SQLAlchemy."""
    import optuna

    errs: list[type[BaseException]] = [optuna.exceptions.StorageInternalError, ConnectionError, TimeoutError]
    with contextlib.suppress(ImportError):
        import sqlalchemy.exc as sx

        errs += [sx.OperationalError, sx.InterfaceError, sx.DisconnectionError]
    return tuple(errs)


def first_line(e: BaseException) -> str:
    """An error's first line (or its type), any password masked: what a log line shows of it."""
    text = str(e).strip()
    return redact_url(text.splitlines()[0] if text else e.__class__.__name__)


def retrying(fn: Callable[[], Any], *, what: str, seconds: float) -> Any:
    """``fn()``, retried with back-off (1, 2, 4 ... 10 s) while the storage is unreachable; after
    ``seconds`` a :class:`StorageLost` that says finished trials are safe and how to resume."""
    errs = storage_errors()
    deadline = time.monotonic() + seconds
    delay = 1.0
    while True:
        try:
            return fn()
        except errs as e:
            note_outage()
            msg = first_line(e)
            if time.monotonic() + delay > deadline:
                raise StorageLost(f"{what}: the study storage was unreachable for over {seconds:g} s "
                                  f"(study.storage_retry_s); last error: {msg}. Finished trials are kept in the "
                                  f"storage: run the same command again to resume") from e
            log.warning("%s: the study storage is unreachable (%s); retrying in %g s", what, msg, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


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


def first_beat(storage: Any, study: Any, trial: Any) -> int:
    """Record ``trial``'s first heartbeat at once (``RDBStorage.record_heartbeat``, public), right
    after ``ask``: optuna fails a silent worker's trial only once it has beaten, so a worker killed
    between ``ask`` and its heartbeat thread's first beat would leave a trial RUNNING that nothing
    ever fails, and every other worker waiting for it forever."""
    tid = _trial_id(storage, study, trial)
    storage.record_heartbeat(tid)
    return tid


class Heartbeat:
    """Beats for one trial every ``interval`` seconds while it runs (the first beat was recorded
    under the lock by :func:`first_beat`).  Unlike Optuna's own heartbeat thread, which dies at
    the first database error, it keeps trying through a server restart: a trial whose worker is
    alive is not failed as stale because its database blinked."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, max(float(interval), 0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def _run(self) -> None:
        errs = storage_errors()
        down = False
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
                if down:
                    log.info("heartbeat: the study storage is back")
                down = False
            except errs as e:
                note_outage()
                if not down:
                    log.warning("heartbeat: the study storage is unreachable (%s); still trying", first_line(e))
                down = True

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def redact_url(url: str) -> str:
    """A URL (or a message holding one) with any password replaced by ***, for logs, summaries,
    MLflow and reports: the ``user:password@`` part and ``password=`` query parameters."""
    # user:password@host, the password running to the last "@" before the host (an unencoded "@"
    # in it must not leave a tail), and again for each host of a multi-host URL
    url = re.sub(r"(://[^:/@\s]*):[^\s/]*@", r"\1:***@", url)
    url = re.sub(r"(,[^:/@,\s]*):[^\s/,]*@", r"\1:***@", url)
    # password=, sslpassword=, passwd=, pwd= in a query string or a libpq keyword DSN
    return re.sub(r"(?i)\b((?:ssl)?password|passwd|pwd)(\s*=\s*)('[^']*'|[^&\s]*)", r"\1\2***", url)


def worker_id() -> str:
    """Which worker ran a trial (a trial user attribute): host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def recover_orphans(study: Any, storage: Any, max_retry: int) -> None:
    """Under the study lock: fail and re-queue RUNNING trials that no worker ever claimed.  Every
    trial asked under the lock gets its first heartbeat and its ``worker`` and ``claimed``
    attributes before the lock is released, so a RUNNING trial without them was left behind by a worker killed (or a
    connection dropped) between ``ask`` and that claim.  Optuna's heartbeat check never fails such
    a trial (it has no heartbeat), and every worker would wait for it forever."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    # "claimed" holds the trial's own number: a re-queued copy carries its original's user attributes
    orphans = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if t.user_attrs.get("claimed") != t.number]
    if not orphans:
        return
    sid = storage.get_study_id_from_name(study.study_name)
    import optuna

    for t in orphans:
        tid = storage.get_trial_id_from_study_id_trial_number(sid, t.number)
        try:
            storage.set_trial_user_attr(tid, "reason", "never claimed: the worker that asked for it was killed (or "
                                                       "lost its connection) before its first heartbeat")
            failed = storage.set_trial_state_values(tid, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # finished meanwhile by its own worker
            continue
        if failed:
            log.warning("trial %d was asked but never claimed by a worker (killed between ask and its first "
                        "heartbeat?): failed and re-queued", t.number)
            RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, storage.get_trial(tid))
