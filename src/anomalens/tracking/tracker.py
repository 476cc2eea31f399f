"""What every tracker shares: the interface (:class:`Tracker`: runs, parameters, metrics, artefacts; a
backend implements its ``_start`` / ``_params`` / ``_metrics`` / ``_tags`` / ``_artifact`` / ``_end``), the
tracker that records nothing, how values are flattened and written as text, and the tags saying where a run
came from."""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

from anomalens.version import __version__


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
