"""``anomalens serve RUN --watch SOURCE``: a ``Watcher`` inside the service, sharing its model.

The watcher's images go through the service's micro-batcher (one model, one thread scoring it, uploads and
watched images batched together); each record goes to the sinks and to the service's ``observe`` (the
verdict counters, the drift window and the history the operator page shows); the watcher's queue depth and
dropped frames are counted in the service's metrics (``/metrics``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anomalens.line.watcher import Scored, Watcher


def service_watcher(service: Any, source: str, **options: Any) -> Watcher:
    """A Watcher of ``source`` scoring through ``service`` (an ``anomalens.serve.service.Service``), not yet
    started (``start`` / ``stop`` / ``join``: the app's lifespan); ``options`` as for ``Watcher``. A bad
    source or sink spec is refused here, in one line, before the service starts."""

    def score(inputs: list[np.ndarray]) -> list[Scored]:
        futures = [service.batcher.submit(x) for x in inputs]
        return [(item.score, bool(item.label), item.amap) for item, _ in (future.result() for future in futures)]

    def observe(record: dict[str, Any]) -> None:
        service.observe(record, None, source="watch")

    return Watcher(service.model.model, source, model_id=service.model_id, metrics=service.metrics,
                   count_verdicts=False, on_record=observe, scorer=score, **options)


__all__ = ["service_watcher"]
