"""Experiment tracking: what a fit, a test, a benchmark job or a tuning trial logs to MLflow or TensorBoard.

``open_tracker(spec)`` reads ``--track``'s value:

- ``mlflow`` — a local MLflow file store in ``./mlruns`` (no server; ``mlflow ui --backend-store-uri ./mlruns``
  shows it); ``mlflow:URI`` — a folder path, a ``file:`` URI, a database (``sqlite:///mlflow.db``) or a tracking
  server (``http://host:5000``). Runs go to the experiment ``$MLFLOW_EXPERIMENT_NAME``, else ``anomalens``.
- ``tensorboard`` — event files under ``./tensorboard``, one sub-folder per run (``tensorboard --logdir
  tensorboard``); ``tensorboard:DIR`` — under DIR. Scalars are the metrics and the training curves, the
  parameters go to the HPARAMS tab, tags to the TEXT tab, and artefacts are copied into the run's folder.
- None (no ``--track``) — a tracker that records nothing, so callers never test for one.

A tracker is a context manager (leaving it ends an open run, as FAILED when an exception leaves it).
``start_run(name, tags)``, ``log_params``, ``log_metrics(metrics, step)``, ``log_artifact(path)``,
``end_run()``; ``run(name, tags)`` starts a run only when none is open, so a caller that opened one (a
benchmark job, a tuning trial) gets the workflow's logs in it. Nested values are flattened to dotted keys
(``per_defect_type.crack.image_auroc``); metrics that are not finite numbers (an undefined AUROC) are left
out. MLflow and TensorBoard are imported when a tracker opens, never to parse a command line; both come
with ``pip install 'anomalens[research]'``.

The rooms: ``tracker`` (the interface every tracker has, and the provenance tags of a run),
``mlflow_tracker`` and ``tensorboard_tracker`` (one backend each); this package reads ``--track``.
"""

from __future__ import annotations

import os
from pathlib import Path

from anomalens.errors import ConfigError
from anomalens.tracking.mlflow_tracker import DEFAULT_EXPERIMENT, DEFAULT_MLFLOW_DIR, MlflowTracker, mlflow_uri
from anomalens.tracking.tensorboard_tracker import DEFAULT_TENSORBOARD_DIR, TensorBoardTracker
from anomalens.tracking.tracker import NullTracker, Tracker, flatten, provenance_tags

__all__ = ["DEFAULT_MLFLOW_DIR", "DEFAULT_TENSORBOARD_DIR", "NullTracker", "Tracker", "TRACK_HELP", "check_track_spec",
           "flatten", "mlflow_uri", "open_tracker", "provenance_tags"]

TRACK_HELP = (f"log parameters, metrics, training curves and the report: mlflow (a local store in ./{DEFAULT_MLFLOW_DIR}), "
              f"mlflow:URI (a folder, file:, sqlite: or http(s): tracking URI), tensorboard (./{DEFAULT_TENSORBOARD_DIR}) "
              "or tensorboard:DIR; pip install 'anomalens[research]'")
_SPEC_FORMS = "mlflow, mlflow:URI, tensorboard or tensorboard:DIR"


def check_track_spec(spec: str) -> str:
    """``spec`` when it names a tracker (``--track``'s argument type: checked without importing one)."""
    kind, _, where = spec.partition(":")
    if kind not in ("mlflow", "tensorboard") or (spec.endswith(":") and not where):
        raise ConfigError(f"--track {spec!r}: expected {_SPEC_FORMS}")
    return spec


def open_tracker(spec: str | None, experiment: str | None = None) -> Tracker:
    """The tracker ``spec`` names (this package's docstring); None or '' → one that records nothing.

    ``experiment``: MLflow's experiment (default ``$MLFLOW_EXPERIMENT_NAME``, else ``anomalens``).
    """
    if not spec:
        return NullTracker()
    check_track_spec(spec)
    kind, _, where = spec.partition(":")
    if kind == "mlflow":
        return MlflowTracker(mlflow_uri(where), experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
    return TensorBoardTracker(Path(where or DEFAULT_TENSORBOARD_DIR))
