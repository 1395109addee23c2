"""Study storage and its settings: the Optuna storage URL, the local lock, heartbeats.

Optuna's heartbeat thread and its "is this storage heartbeat-enabled" check live in the
private ``optuna.storages._heartbeat``: ``Study.optimize`` uses them internally, but the
worker loop needs ask/tell (to hold a lock around ``ask``), so they are reached here, and
only here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import check_keys, to_dict
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


def study_settings(cfg: Any, run_dir: Path) -> StudySettings:
    s = to_dict(cfg.study) or {}
    check_keys(s, {"name", "n_trials", "storage", "sampler", "seed", "n_startup_trials", "pruner", "heartbeat",
                   "max_retry", "strict", "allow_infeasible", "max_consecutive_failures", "max_failures",
                   "score_threads"}, "study")
    pr = s.get("pruner") or {}
    check_keys(pr, {"enabled", "p_threshold", "n_startup_steps"}, "study.pruner")
    hb = s.get("heartbeat") or {}
    check_keys(hb, {"interval", "grace_period"}, "study.heartbeat")
    sampler = str(s.get("sampler", "tpe"))
    if sampler not in ("tpe", "gp", "nsga2", "random", "grid"):
        raise ConfigError(f"study.sampler must be tpe, gp, nsga2, random or grid, got {sampler!r}")
    n = int(s.get("n_trials", 0))
    if n < 1:
        raise ConfigError(f"study.n_trials must be >= 1, got {n}")
    name = check_study_name(str(s.get("name") or ""))
    max_consec, max_fail = int(s.get("max_consecutive_failures", 3)), int(s.get("max_failures", 10))
    if max_consec < 1 or max_fail < 1:
        raise ConfigError("study.max_consecutive_failures and study.max_failures must be >= 1")
    storage = s.get("storage") or f"sqlite:///{(run_dir / 'study.db').resolve()}"
    threads = s.get("score_threads", "auto")
    if threads == "auto":
        threads = min(len(os.sched_getaffinity(0)), 4)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"study.score_threads must be an integer >= 1 or auto, got {threads!r}")
    return StudySettings(name=name, n_trials=n, storage=str(storage), sampler=sampler, seed=int(s.get("seed", 0)),
                         n_startup_trials=int(s.get("n_startup_trials", 8)), pruner=bool(pr.get("enabled", True)),
                         p_threshold=float(pr.get("p_threshold", 0.1)), n_startup_steps=int(pr.get("n_startup_steps", 5)),
                         heartbeat_interval=int(hb.get("interval", 30)), grace_period=int(hb.get("grace_period", 90)),
                         max_retry=int(s.get("max_retry", 2)), strict=bool(s.get("strict", False)),
                         allow_infeasible=bool(s.get("allow_infeasible", False)),
                         max_consecutive_failures=max_consec, max_failures=max_fail, score_threads=threads)


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
    """Whether the storage fails the trials of silent workers (true for RDB storages with an interval)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return bool(is_heartbeat_enabled(storage))


def heartbeat(storage: Any, study: Any, trial: Any) -> Any:
    from optuna.storages._heartbeat import get_heartbeat_thread

    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                                trial.number)
    return get_heartbeat_thread(trial_id, storage)


def redact_url(url: str) -> str:
    """A storage URL with any password replaced by ***, for logs and summaries."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)
