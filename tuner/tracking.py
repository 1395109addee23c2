"""MLflow tracking: one parent run per study, one nested run per trial.

Every MLflow call goes through :meth:`Tracker._safe`: a *tracking* failure (an MLflow
error, a network or file-system error, a database error of the tracking store) is
reported once as a warning with its reason, counted in ``Tracker.failures``, and never
stops the study.  Any other exception is a bug (in tuner or in how it calls MLflow) and
propagates.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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
        self._mlflow: Any = None
        self._client: Any = None
        self._exp_id: str | None = None

    def _safe(self, what: str, fn: Callable[[], Any]) -> Any:
        if not self.enabled:
            return None
        try:
            return fn()
        except tracking_errors() as e:  # reported once, counted, never propagated into the study
            self.failures += 1
            if self.failures == 1:
                from .storage import redact_url

                log.warning("MLflow: %s failed (%s: %s); the study goes on without complete tracking "
                            "(further tracking failures are counted, not repeated)", what, e.__class__.__name__,
                            redact_url(str(e)))
            return None

    def _setup(self) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        if self.uri.startswith("file:") or "://" not in self.uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        # MLflow prints "View run ... at: <tracking URI>" after each run: with a password in the URI
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self._mlflow = mlflow
        self._client = MlflowClient(tracking_uri=self.uri)
        exp = self._client.get_experiment_by_name(self.experiment)
        local = self.uri.startswith(("sqlite:", "file:")) or "://" not in self.uri
        where = self.artifact_dir.resolve().as_uri() if self.artifact_dir is not None and local else None
        self._exp_id = exp.experiment_id if exp else self._client.create_experiment(self.experiment,
                                                                                    artifact_location=where)

    def start_study(self, existing_run_id: str | None, *, name: str, params: Mapping[str, Any],
                    tags: Mapping[str, str]) -> str | None:
        """The parent run's id (reused on resume)."""

        def go() -> str:
            if self._client is None:
                self._setup()
            if existing_run_id:
                return existing_run_id
            run = self._client.create_run(self._exp_id, run_name=name, tags={**tags, "tuner.kind": "study"})
            for k, v in params.items():
                self._client.log_param(run.info.run_id, k, str(v)[:6000])
            return str(run.info.run_id)

        return self._safe("start study run", go)

    def log_trial(self, parent: str | None, *, number: int, params: Mapping[str, Any], metrics: Mapping[str, float],
                  tags: Mapping[str, str], artifacts: list[Path], status: str) -> None:
        def go() -> None:
            if self._client is None:
                self._setup()
            run = self._client.create_run(
                self._exp_id, run_name=f"trial-{number}",
                tags={**tags, "mlflow.parentRunId": parent or "", "tuner.kind": "trial", "tuner.trial": str(number)})
            rid = run.info.run_id
            for k, v in params.items():
                self._client.log_param(rid, k, str(v))
            for k, v in metrics.items():
                if v == v:  # MLflow rejects NaN in some stores
                    self._client.log_metric(rid, k, float(v))
            for a in artifacts:
                self._client.log_artifact(rid, str(a))
            self._client.set_terminated(rid, status="FINISHED" if status == "COMPLETE" else "FAILED")

        self._safe(f"log trial {number}", go)

    def log_parent(self, parent: str | None, *, metrics: Mapping[str, float] | None = None,
                   artifacts: list[Path] | None = None, tags: Mapping[str, str] | None = None) -> None:
        def go() -> None:
            if self._client is None:
                self._setup()
            for k, v in (metrics or {}).items():
                if v == v:
                    self._client.log_metric(parent, k, float(v))
            for k, tag in (tags or {}).items():
                self._client.set_tag(parent, k, tag)
            for a in artifacts or []:
                self._client.log_artifact(parent, str(a))

        if parent:
            self._safe("log study results", go)
