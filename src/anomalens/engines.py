"""Fitting engines: how ``fit_run`` fits a detector — strategies passed in, never hooks set on a model.

    fit_run("padim", DATA, RUN)                                        # LocalFit: this process
    fit_run("padim", DATA, RUN, engine=RayShards(shards=8))            # on Ray shards (--engine ray)
    fit_run("stpm", DATA, RUN, engine=DataParallel(resume=False))      # in every torchrun process (--engine ddp)

An engine (``FitEngine``) has three methods:

- ``check(detector)``: refuse (ConfigError, one line) what it cannot fit, before anything is read or written;
- ``session(detector, run_dir, overwrite)``: a context held around the whole run (the torchrun process
  group), yielding whether this process writes the run (False for the other ranks of a torchrun job, which
  train along and return None from ``fit_run``);
- ``fit(detector, train, progress)``: fit the detector and return what ``run.json`` records about the engine.
  An engine that does part of the work itself hands the detector a strategy for it in the call —
  ``Detector.fit(cross_fit=...)`` (the out-of-fold work, ``anomalens.detector.normal_scores.CrossFit``),
  ``TrainedDetector.fit(data_parallel=...)`` (the plan of one process's training) — so a detector never
  learns which engine runs it.

A new engine is one class with these three methods. ``RayShards`` and ``DataParallel`` live with the rest of
their machinery in ``anomalens.distributed`` and load on first use from here.
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Protocol, Sequence

if TYPE_CHECKING:
    from anomalens.detector import Detector

_WHERE = {"RayShards": "anomalens.distributed.sharded_fit", "DataParallel": "anomalens.distributed.ddp"}

__all__ = ["FitEngine", "LocalFit", *sorted(_WHERE)]


class FitEngine(Protocol):
    """How ``fit_run`` fits a detector (module docstring)."""

    def check(self, detector: Detector) -> None: ...
    def session(self, detector: Detector, run_dir: Path, overwrite: bool) -> ContextManager[bool]: ...
    def fit(self, detector: Detector, train: Sequence, progress: bool) -> dict[str, Any]: ...


class LocalFit:
    """The default engine: ``detector.fit(train)`` in this process; nothing to check, hold or record."""

    def check(self, detector: Detector) -> None:
        """Every detector fits in one process."""

    def session(self, detector: Detector, run_dir: Path, overwrite: bool) -> ContextManager[bool]:
        return contextlib.nullcontext(True)

    def fit(self, detector: Detector, train: Sequence, progress: bool) -> dict[str, Any]:
        detector.fit(train, progress=progress)
        return {}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'anomalens.engines' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
