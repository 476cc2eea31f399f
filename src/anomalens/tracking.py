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
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from anomalens.errors import ConfigError
from anomalens.version import __version__

__all__ = ["DEFAULT_MLFLOW_DIR", "DEFAULT_TENSORBOARD_DIR", "NullTracker", "Tracker", "TRACK_HELP", "check_track_spec",
           "flatten", "mlflow_uri", "open_tracker", "provenance_tags"]

DEFAULT_MLFLOW_DIR = "mlruns"
DEFAULT_TENSORBOARD_DIR = "tensorboard"
DEFAULT_EXPERIMENT = "anomalens"
TRACK_HELP = (f"log parameters, metrics, training curves and the report: mlflow (a local store in ./{DEFAULT_MLFLOW_DIR}), "
              f"mlflow:URI (a folder, file:, sqlite: or http(s): tracking URI), tensorboard (./{DEFAULT_TENSORBOARD_DIR}) "
              "or tensorboard:DIR; pip install 'anomalens[research]'")
_SPEC_FORMS = "mlflow, mlflow:URI, tensorboard or tensorboard:DIR"
_URI_SCHEMES = ("file:", "http://", "https://", "sqlite:", "postgresql", "mysql", "mssql", "databricks")


def check_track_spec(spec: str) -> str:
    """``spec`` when it names a tracker (``--track``'s argument type: checked without importing one)."""
    kind, _, where = spec.partition(":")
    if kind not in ("mlflow", "tensorboard") or (spec.endswith(":") and not where):
        raise ConfigError(f"--track {spec!r}: expected {_SPEC_FORMS}")
    return spec


def open_tracker(spec: str | None, experiment: str | None = None) -> Tracker:
    """The tracker ``spec`` names (module docstring); None or '' → one that records nothing.

    ``experiment``: MLflow's experiment (default ``$MLFLOW_EXPERIMENT_NAME``, else ``anomalens``).
    """
    if not spec:
        return NullTracker()
    check_track_spec(spec)
    kind, _, where = spec.partition(":")
    if kind == "mlflow":
        return MlflowTracker(mlflow_uri(where), experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
    return TensorBoardTracker(Path(where or DEFAULT_TENSORBOARD_DIR))


def mlflow_uri(where: str) -> str:
    """A tracking URI: a URI as given, a folder path as a ``file:`` URI (the default ``./mlruns``)."""
    if where.startswith(_URI_SCHEMES):
        return where
    return Path(where or DEFAULT_MLFLOW_DIR).expanduser().resolve().as_uri()


# -- what every tracker shares ----------------------------------------------------------------------------
def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys: {"a": {"b": 1}} → {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _param_text(value: Any) -> str:
    """A parameter as text: lists and tuples as [a, b], None as null, booleans as true / false."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_param_text(v) for v in value) + "]"
    return str(value)


def _finite_numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among ``metrics`` (flattened); undefined figures (None, NaN) and texts left out."""
    return {k: float(v) for k, v in flatten(metrics).items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))}


def _git_commit(folder: Path) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def provenance_tags(data: Any = None, **extra: Any) -> dict[str, str]:
    """Tags saying where a run came from: the anomalens version, the git commit of the anomalens source
    (an editable install) and of the working folder when they are git checkouts, the command line, DATA."""
    tags = {"anomalens.version": __version__,
            "anomalens.command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]) if sys.argv and sys.argv[0] else ""}
    source_commit = _git_commit(Path(__file__).resolve().parent)
    if source_commit:
        tags["anomalens.git_commit"] = source_commit
    work_commit = _git_commit(Path.cwd())
    if work_commit:
        tags["git_commit"] = work_commit
    if data is not None:
        tags["anomalens.data"] = str(getattr(data, "name", None) or data) if not isinstance(data, (str, Path)) else str(data)
    tags.update({k if "." in k else f"anomalens.{k}": str(v) for k, v in extra.items() if v is not None})
    return tags


class Tracker:
    """The interface every tracker has (this base records nothing: see ``NullTracker``)."""

    #: what ``--track`` said, for messages
    description = "no tracking"

    def __init__(self) -> None:
        self.active = False

    # the five calls
    def start_run(self, name: str, tags: Mapping[str, Any] | None = None) -> None:
        if self.active:
            raise RuntimeError(f"{self.description}: a run is already open; end it first")
        self._start(name, {k: str(v) for k, v in (tags or {}).items()})
        self.active = True

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.active:
            self._params({k: _param_text(v) for k, v in flatten(params).items()})

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self.active:
            values = _finite_numbers(metrics)
            if values:
                self._metrics(values, 0 if step is None else int(step))

    def log_artifact(self, path: str | os.PathLike[str]) -> None:
        """Copy a file, or a folder's files, into the run's artefacts (a missing path is skipped)."""
        path = Path(path)
        if self.active and path.exists():
            self._artifact(path)

    def end_run(self, status: str = "FINISHED") -> None:
        if self.active:
            self.active = False
            self._end(status)

    # conveniences
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.active:
            self._tags({k: str(v) for k, v in tags.items() if v is not None})

    def find_run(self, tags: Mapping[str, str]) -> str | None:
        """The id of the latest run carrying ``tags`` (MLflow), or None."""
        return None

    def log_history(self, history: Mapping[str, list[float]], prefix: str = "train/") -> None:
        """Per-epoch curves ({loss name: values}) as step series: step = epoch (0-based)."""
        for name, values in history.items():
            for epoch, value in enumerate(values):
                self.log_metrics({f"{prefix}{name}": value}, step=epoch)

    @contextlib.contextmanager
    def run(self, name: str, tags: Mapping[str, Any] | None = None) -> Iterator[Tracker]:
        """A run for the block — or the run already open (then only the tags are added, and it stays open)."""
        if self.active:
            self.set_tags(tags or {})
            yield self
            return
        self.start_run(name, tags)
        try:
            yield self
        except BaseException:
            self.end_run("FAILED" if not isinstance(sys.exc_info()[1], KeyboardInterrupt) else "KILLED")
            raise
        self.end_run()

    def close(self) -> None:
        """Release what the tracker holds (files, connections)."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.end_run("FINISHED" if kind is None else "FAILED")
        self.close()

    # what a tracker implements
    def _start(self, name: str, tags: dict[str, str]) -> None:
        pass

    def _params(self, params: dict[str, str]) -> None:
        pass

    def _metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def _tags(self, tags: dict[str, str]) -> None:
        pass

    def _artifact(self, path: Path) -> None:
        pass

    def _end(self, status: str) -> None:
        pass


class NullTracker(Tracker):
    """Records nothing (no ``--track``)."""


# -- MLflow --------------------------------------------------------------------------------------------------
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


# -- TensorBoard ---------------------------------------------------------------------------------------------
class TensorBoardTracker(Tracker):
    """Event files written by TensorBoard's own writer (no TensorFlow, no torch), one folder per run."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root, self.description = root, f"tensorboard {root}"
        try:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"--track tensorboard needs TensorBoard: pip install 'anomalens[research]' ({exc})") from None
        if root.exists() and not root.is_dir():
            raise ConfigError(f"--track tensorboard:{root}: is a file, not a folder")
        self.writer = None
        self.run_dir: Path | None = None

    def _start(self, name: str, tags: dict[str, str]) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        # a folder per run, named so that runs sort by time and two started together never share one
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
        self.run_dir = self.root / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe[:80]}-{secrets.token_hex(3)}"
        self.writer = EventFileWriter(str(self.run_dir))
        self._tags({"run_name": name, **tags})

    def _write(self, values: list, step: int = 0) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))

    def _params(self, params: dict[str, str]) -> None:
        # the HPARAMS tab: one session-start record per run, numbers as numbers so that they sort and plot
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.plugins.hparams import plugin_data_pb2

        start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for key, text in params.items():
            try:
                number = float(text)
            except ValueError:
                number = None
            if number is not None and math.isfinite(number):
                start.hparams[key].number_value = number
            else:
                start.hparams[key].string_value = text
        content = plugin_data_pb2.HParamsPluginData(session_start_info=start, version=0).SerializeToString()
        metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=content))
        self._write([Summary.Value(tag="_hparams_/session_start_info", metadata=metadata)])
        self._text("params", params)

    def _metrics(self, metrics: dict[str, float], step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._write([Summary.Value(tag=k, simple_value=v) for k, v in metrics.items()], step)

    def _tags(self, tags: dict[str, str]) -> None:
        self._text("tags", tags)

    def _text(self, tag: str, values: dict[str, str]) -> None:
        """A two-column markdown table in the TEXT tab."""
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData

        rows = "\n".join(f"| {k} | {v.replace('|', '&#124;')} |" for k, v in values.items())
        text = f"| name | value |\n|---|---|\n{rows}"
        metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
            plugin_name="text", content=TextPluginData(version=0).SerializeToString()))
        tensor = TensorProto(dtype="DT_STRING", string_val=[text.encode("utf-8")],
                             tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
        self._write([Summary.Value(tag=f"{tag}/text_summary", metadata=metadata, tensor=tensor)])

    def _artifact(self, path: Path) -> None:
        from anomalens.outputs.atomic import write_bytes

        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        base = path.parent
        for file in files:
            (self.run_dir / "artifacts" / file.relative_to(base)).parent.mkdir(parents=True, exist_ok=True)
            write_bytes(self.run_dir / "artifacts" / file.relative_to(base), file.read_bytes())

    def _end(self, status: str) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

        code = {"FINISHED": api_pb2.STATUS_SUCCESS, "FAILED": api_pb2.STATUS_FAILURE}.get(status, api_pb2.STATUS_UNKNOWN)
        end = plugin_data_pb2.SessionEndInfo(status=code, end_time_secs=time.time())
        content = plugin_data_pb2.HParamsPluginData(session_end_info=end, version=0).SerializeToString()
        metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=content))
        self._write([Summary.Value(tag="_hparams_/session_end_info", metadata=metadata)])
        self.writer.close()
        self.writer = None
