"""Where verdicts go: JSON lines (stdout or a file), MQTT, OPC UA and webhooks, any combination at once.

    sinks = open_sinks(["jsonl:results.jsonl", "mqtt://127.0.0.1:1883/line1"], model_id="padim-3f2a",
                       spool_dir=Path("spool"))
    sinks.send(record)      # never waits: each sink has its own bounded queue and worker thread
    sinks.stats()           # {"mqtt://127.0.0.1:1883/line1": {"sent", "failed", "spooled", "dropped", "pending"}}
    sinks.close(timeout=5)  # delivers what waits (until the timeout), keeps the spool for the next start

Spec strings are parsed in :mod:`~anomalens.line.sinks.specs` (``python -m anomalens.line.sinks SPEC…``
checks them); what every sink shares (queue, worker, outages, back-off, counts) is in
:mod:`~anomalens.line.sinks.delivery`; the spool in :mod:`~anomalens.line.sinks.spool`; one module per sink.
Importing this package is light: a sink's client library is imported when the sink is opened.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomalens.line.sinks.specs import SinkSettings, SinkSpec, parse_sink_spec, parse_sink_specs

if TYPE_CHECKING:
    from anomalens.line.sinks.delivery import Sink

__all__ = ["SinkSet", "SinkSettings", "SinkSpec", "open_sinks", "parse_sink_spec", "parse_sink_specs"]

logger = logging.getLogger("anomalens.line.sinks")


class SinkSet:
    """The sinks of one watcher: ``send`` fans a record out to each, ``stats`` counts, ``close`` flushes."""

    def __init__(self, sinks: Sequence[Sink]):
        self.sinks = list(sinks)

    @property
    def names(self) -> list[str]:
        return [sink.name for sink in self.sinks]

    def send(self, record: dict[str, Any]) -> None:
        """Hand ``record`` to every sink; returns at once (no network or disk work on the caller's thread).
        Each sink encodes it on its own thread: do not change the dict after sending it."""
        if not isinstance(record, dict):
            raise TypeError(f"a sink record is a dict of JSON values, not {type(record).__name__}")
        for sink in self.sinks:
            sink.send(record)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per sink: records ``sent``, ``failed`` delivery attempts, records ``spooled`` (ever), ``dropped``
        (counted losses) and ``pending`` (waiting now, in memory or on the spool)."""
        return {sink.name: sink.stats() for sink in self.sinks}

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what waits, for at most ``timeout`` seconds over all sinks together, then stop them.
        A peer still down keeps its records on the spool; they are delivered first by the next start."""
        deadline = time.monotonic() + timeout
        for sink in self.sinks:
            sink.begin_close(deadline)
        for sink in self.sinks:
            sink.finish_close()

    def __enter__(self) -> SinkSet:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def spool_folder_name(sink_name: str) -> str:
    """A file name for the spool of ``sink_name``: readable, and distinct for distinct sinks."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", sink_name).strip("-.")[:60]
    return f"{readable}-{hashlib.sha1(sink_name.encode()).hexdigest()[:8]}"


def _build(spec: SinkSpec, model_id: str, spool_dir: Path | None, settings: SinkSettings, log: logging.Logger,
           metrics: Any) -> Sink:
    common = {"settings": settings, "log": log, "metrics": metrics}
    if spec.kind == "jsonl":
        from anomalens.line.sinks.jsonlines import JsonLinesSink

        return JsonLinesSink(spec.name, path=spec.path, **common)
    if spec.kind == "opcua":
        from anomalens.line.sinks.opcua import OpcUaSink

        return OpcUaSink(spec.name, host=spec.host, port=spec.port, model_id=model_id, **common)
    from anomalens.line.sinks.spool import Spool

    spool = Spool(spool_dir / spool_folder_name(spec.name) if spool_dir is not None else None, name=spec.name,
                  max_records=settings.spool_records, segment_records=settings.spool_segment_records,
                  memory_records=settings.memory_records, log=log)
    if spec.kind == "mqtt":
        from anomalens.line.sinks.mqtt import MqttSink

        return MqttSink(spec.name, host=spec.host, port=spec.port, prefix=spec.prefix, spool=spool, **common)
    from anomalens.line.sinks.webhook import WebhookSink

    return WebhookSink(spec.name, url=spec.url, spool=spool, **common)


def open_sinks(specs: Sequence[str], *, model_id: str, spool_dir: Path | str | None = None,
               log: logging.Logger = logger, metrics: Any = None, settings: SinkSettings | None = None) -> SinkSet:
    """Open the sinks ``specs`` name (``["jsonl"]`` when empty) and start their worker threads.

    ``spool_dir``: where MQTT and webhook sinks keep records while their peer is down (one sub-folder per
    sink); None keeps them in memory only (lost at exit, counted). ``metrics``: an object with
    ``count_sink_failure(sink_name)`` (``anomalens.monitoring.LineMetrics``). A bad spec, a file that
    cannot be written or an OPC UA port already taken raise an ``AnomalensError`` (one line) before any
    sink starts delivering; a broker or webhook that is down is not an error (its records are spooled).
    """
    parsed = parse_sink_specs(list(specs) or ["jsonl"])
    settings = settings or SinkSettings()
    spool_dir = Path(spool_dir) if spool_dir is not None else None
    if spool_dir is None and any(spec.kind in ("mqtt", "webhook") for spec in parsed):
        log.info("sinks: no spool folder: while a peer is down its records are kept in memory only "
                 "(at most %d per sink)", settings.memory_records)
    opened: list[Sink] = []
    try:
        for spec in parsed:
            sink = _build(spec, model_id, spool_dir, settings, log, metrics)
            opened.append(sink)
            sink.start()
    except BaseException:
        SinkSet(opened).close(timeout=1.0)
        raise
    return SinkSet(opened)
