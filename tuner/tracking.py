"""MLflow tracking: one parent run per study, one nested run per trial.

Every MLflow call goes through :meth:`Tracker._safe`: a *tracking* failure (an MLflow
error, a network or file-system error, a database error of the tracking store) is
reported once as a warning with its reason, counted in ``Tracker.failures``, and never
stops the study.  Any other exception is a bug (in tuner or in how it calls MLflow) and
propagates.

Tracking never stalls a study either.  For an HTTP tracking server the tracker sets short
retry and timeout settings (:data:`HTTP_DEFAULTS`, each only where the user has not set it;
MLflow's own default is 7 retries, about 4 minutes per call against a down server), and after
one connection failure it stops calling the server for the rest of the process: the trials go
on untracked, each skipped record counted as a failure.  The Optuna storage and the run folder
remain the study's record.

The tracker counts as set up only once its experiment id is known; a failed setup is retried
on the next call, and no run is created without an experiment.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# MLflow's HTTP settings (mlflow/environment_variables.py), process-wide defaults set by the first
# tracker of an http(s) URI where the user has not set them: 3 tries, about 3 s against a refused
# port, about 35 s against a server that never answers -- once, since the tracker then stops calling.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def tracking_errors() -> tuple[type[BaseException], ...]:
    """What a tracking backend raises when it is unreachable or refuses a write."""
    errs: list[type[BaseException]] = [OSError, TimeoutError]  # OSError covers ConnectionError, full disks
    try:
        from mlflow.exceptions import MlflowException

        errs.append(MlflowException)
    except ImportError:  # mlflow missing: _setup raises ImportError, reported as a tracking failure
        errs.append(ImportError)
    for mod, name in (("requests.exceptions", "RequestException"), ("sqlalchemy.exc", "SQLAlchemyError")):
        try:
            errs.append(getattr(__import__(mod, fromlist=[name]), name))
        except ImportError:
            pass
    return tuple(errs)


def is_unreachable(e: BaseException) -> bool:
    """Whether a tracking error means the server cannot be reached (refused, reset, no connection
    within the timeout).  A read that times out (a slow artifact upload) is not: the server is there.

    MLflow wraps the network error in an ``MlflowException``, so the chain is searched."""
    kinds: list[type[BaseException]] = [ConnectionError]
    try:
        from requests.exceptions import ConnectionError as RequestsConnectionError
        from requests.exceptions import ReadTimeout

        kinds.append(RequestsConnectionError)  # ConnectTimeout among them
    except ImportError:
        ReadTimeout = ()  # type: ignore[assignment,misc]  # noqa: N806
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        # a read that timed out (the server answered the connection): requests raises ReadTimeout, or a
        # ConnectionError over urllib3's MaxRetryError whose reason is a ReadTimeoutError once retries run out
        reason = getattr(cur.args[0], "reason", None) if cur.args else None
        if isinstance(cur, ReadTimeout) or type(reason).__name__ == "ReadTimeoutError":
            return False
        if isinstance(cur, tuple(kinds)):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


class Tracker:
    def __init__(self, *, enabled: bool, uri: str, experiment: str, artifact_dir: Path | None = None) -> None:
        """``artifact_dir``: where a newly created experiment keeps its artifacts (for a local
        store, beside the database in the run folder; MLflow's default is ./mlruns of whatever
        folder the command ran in).  A tracking server keeps its own artifact root."""
        self.enabled = enabled
        self.uri = uri
        self.experiment = experiment
        self.artifact_dir = artifact_dir
        self.failures = 0
        self._client: Any = None
        self._exp_id: str | None = None
        self._unreachable = False  # set by the first connection failure: no more calls to the server

    def _safe(self, what: str, fn: Callable[[], Any]) -> Any:
        if not self.enabled:
            return None
        if self._unreachable:  # warned already; the record is lost, so it is counted
            self.failures += 1
            return None
        try:
            return fn()
        except tracking_errors() as e:  # reported once, counted, never propagated into the study
            from .storage import redact_url

            self.failures += 1
            reason = f"{e.__class__.__name__}: {redact_url(str(e))}"
            if is_unreachable(e):
                self._unreachable = True
                log.warning("MLflow: %s failed (%s); the tracking server %s cannot be reached, so tuner stops "
                            "calling it for the rest of this process and the trials go on untracked (the Optuna "
                            "storage and the run folder keep every result)", what, reason, redact_url(self.uri))
            elif self.failures == 1:  # the first failure is the one reported
                log.warning("MLflow: %s failed (%s); the study goes on without complete tracking "
                            "(further tracking failures are counted, not repeated)", what, reason)
            return None

    def _ready(self) -> tuple[Any, str]:
        """The client and the experiment id, setting them up first if no experiment id is known
        yet (a setup that failed is tried again here, on the next call)."""
        if self._exp_id is None:
            self._exp_id = self._setup()
        return self._client, self._exp_id

    def _setup(self) -> str:
        """The experiment's id, found or created (raises a tracking error where MLflow fails)."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        if self.uri.startswith("file:") or "://" not in self.uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        if self.uri.startswith(("http:", "https:")):
            for name, value in HTTP_DEFAULTS.items():
                os.environ.setdefault(name, value)
        # MLflow prints "View run ... at: <tracking URI>" after each run: with a password in the URI
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        if self._client is None:  # reused by a retried setup; the tracker is set up only once _exp_id is
            self._client = MlflowClient(tracking_uri=self.uri)
        client = self._client
        exp = client.get_experiment_by_name(self.experiment)
        local = self.uri.startswith(("sqlite:", "file:")) or "://" not in self.uri
        where = self.artifact_dir.resolve().as_uri() if self.artifact_dir is not None and local else None
        exp_id = exp.experiment_id if exp else client.create_experiment(self.experiment, artifact_location=where)
        if not exp_id:
            raise MlflowException(f"MLflow gave no id for the experiment {self.experiment!r}")
        return str(exp_id)

    def start_study(self, existing_run_id: str | None, *, name: str, params: Mapping[str, Any],
                    tags: Mapping[str, str]) -> str | None:
        """The parent run's id (reused on resume)."""

        def go() -> str:
            client, exp_id = self._ready()
            if existing_run_id:
                return existing_run_id
            run = client.create_run(exp_id, run_name=name, tags={**tags, "tuner.kind": "study"})
            for k, v in params.items():
                client.log_param(run.info.run_id, k, str(v)[:6000])
            return str(run.info.run_id)

        return self._safe("start study run", go)

    def log_trial(self, parent: str | None, *, number: int, params: Mapping[str, Any], metrics: Mapping[str, float],
                  tags: Mapping[str, str], artifacts: list[Path], status: str) -> None:
        def go() -> None:
            client, exp_id = self._ready()
            run = client.create_run(
                exp_id, run_name=f"trial-{number}",
                tags={**tags, "mlflow.parentRunId": parent or "", "tuner.kind": "trial", "tuner.trial": str(number)})
            rid = run.info.run_id
            for k, v in params.items():
                client.log_param(rid, k, str(v))
            for k, v in metrics.items():
                if v == v:  # MLflow rejects NaN in some stores
                    client.log_metric(rid, k, float(v))
            for a in artifacts:
                client.log_artifact(rid, str(a))
            client.set_terminated(rid, status="FINISHED" if status == "COMPLETE" else "FAILED")

        self._safe(f"log trial {number}", go)

    def log_parent(self, parent: str | None, *, metrics: Mapping[str, float] | None = None,
                   artifacts: list[Path] | None = None, tags: Mapping[str, str] | None = None) -> None:
        def go() -> None:
            client, _ = self._ready()
            for k, v in (metrics or {}).items():
                if v == v:
                    client.log_metric(parent, k, float(v))
            for k, tag in (tags or {}).items():
                client.set_tag(parent, k, tag)
            for a in artifacts or []:
                client.log_artifact(parent, str(a))

        if parent:
            self._safe("log study results", go)
