"""The MLflow backend of ``--track``: ``mlflow`` (a local file store, ``./mlruns``) or ``mlflow:URI`` (a folder,
``file:``, a database or a tracking server). MLflow is imported when the tracker opens."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Mapping

from anomalens.errors import ConfigError
from anomalens.tracking.tracker import Tracker

DEFAULT_MLFLOW_DIR = "mlruns"
DEFAULT_EXPERIMENT = "anomalens"
_URI_SCHEMES = ("file:", "http://", "https://", "sqlite:", "postgresql", "mysql", "mssql", "databricks")


def mlflow_uri(where: str) -> str:
    """A tracking URI: a URI as given, a folder path as a ``file:`` URI (the default ``./mlruns``)."""
    if where.startswith(_URI_SCHEMES):
        return where
    return Path(where or DEFAULT_MLFLOW_DIR).expanduser().resolve().as_uri()


class MlflowTracker(Tracker):
    """Logs through ``mlflow.tracking.MlflowClient`` (no global active run: several trackers can coexist)."""

    def __init__(self, uri: str, experiment: str) -> None:
        super().__init__()
        self.uri, self.experiment, self.description = uri, experiment, f"mlflow {uri}"
        if uri.startswith("file:"):
            # MLflow 3 keeps its file store "in maintenance" and refuses it unless asked: a folder of runs that
            # needs no server and no database is what a local default should be.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ConfigError(f"--track mlflow needs MLflow: pip install 'anomalens[research]' ({exc})") from None
        from mlflow.exceptions import MlflowException

        self._mlflow_errors = (MlflowException, OSError)
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id: str | None = None
        self.experiment_id = self._call(self._experiment_id)

    def _call(self, function, *args, **kwargs):
        """``function(...)`` with MLflow's errors (a refused value, a server that does not answer) as one line."""
        try:
            return function(*args, **kwargs)
        except self._mlflow_errors as exc:
            raise ConfigError(f"{self.description}: {' '.join(str(exc).split())[:300]}") from None

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):  # artefacts beside the database, not in whatever folder runs it
            location = (Path(self.uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
        return self.client.create_experiment(self.experiment, artifact_location=location)

    def find_run(self, tags: Mapping[str, str]) -> str | None:
        if any("'" in str(v) or "`" in k for k, v in tags.items()):  # not expressible in MLflow's filter syntax
            return None
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        found = self._call(self.client.search_runs, [self.experiment_id], filter_string=query, max_results=1,
                           order_by=["attributes.start_time DESC"])
        return found[0].info.run_id if found else None

    def _start(self, name: str, tags: dict[str, str]) -> None:
        self.run_id = self._call(self.client.create_run, self.experiment_id, run_name=name, tags=tags).info.run_id

    def _params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            self._call(self.client.log_batch, self.run_id, params=items[start:start + 100])

    def _metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self._call(self.client.log_batch, self.run_id, metrics=items[start:start + 1000])

    def _tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in tags.items()]
        for start in range(0, len(items), 100):
            self._call(self.client.log_batch, self.run_id, tags=items[start:start + 100])

    def _artifact(self, path: Path) -> None:
        if path.is_dir():
            self._call(self.client.log_artifacts, self.run_id, str(path), artifact_path=path.name)
        else:
            self._call(self.client.log_artifact, self.run_id, str(path))

    def _end(self, status: str) -> None:
        run_id, self.run_id = self.run_id, None
        self._call(self.client.set_terminated, run_id, status=status)
