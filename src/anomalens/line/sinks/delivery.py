"""What every sink shares: a bounded queue that ``send`` never waits on, one worker thread that delivers,
outages reported once (one line when the peer goes down, one when it is back) and counted, and, for a
peer that can be away (MQTT, webhook), a :class:`Spool` the worker fills while the peer is down and
replays, oldest first, when it is back.

The one ordering rule: while the spool holds anything, every record joins the spool's tail and only the
spool's head is delivered, so records reach the peer in the order they were sent. Retries back off
exponentially (``retry_initial`` doubling up to ``retry_max``); a sink may wake its worker sooner
(``peer_is_back``, e.g. when the MQTT client reconnects).

Every record ``send`` accepted ends as exactly one of: sent; dropped (counted, logged once per episode: the
queue full, the spool's bound, a record the peer refused for good, a sink without a spool whose peer
failed); or pending (waiting in the queue, on the spool, or in hand at ``close``; a spool on disk is
delivered by the next run).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any

from anomalens.line.sinks.specs import SinkSettings
from anomalens.line.sinks.spool import Spool
from anomalens.outputs.atomic import json_text

WORKER_POLL_S = 0.2  # how often an idle worker looks at the close flag and moves waiting records


class PeerDown(Exception):
    """The peer cannot take records now; the record is kept (spool) or counted dropped, and retried later."""


class RecordRefused(Exception):
    """The peer refused this record for good (e.g. HTTP 400): retrying would not help; it is counted dropped."""


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class Sink:
    """One destination: ``send`` puts a record on the queue; the worker thread calls :meth:`deliver`.

    Subclasses implement ``deliver(record, payload)`` (``payload`` is the record as one JSON line) and may
    implement ``connect`` (called once before the worker starts; raise an ``AnomalensError`` for a setting
    that cannot work) and ``disconnect``.
    """

    def __init__(self, name: str, settings: SinkSettings, log: logging.Logger, metrics: Any = None,
                 spool: Spool | None = None):
        self.name = name
        self.settings = settings
        self.log = log
        self.metrics = metrics
        self.spool = spool
        self._queue: queue.Queue[dict] = queue.Queue(maxsize=settings.queue_size)
        self._counts_lock = threading.Lock()
        self._counts = {"sent": 0, "failed": 0, "spooled": 0, "dropped": 0}
        # pending = what was taken in (sent here, or left on the spool by an earlier run) - sent - dropped:
        # exact at every instant, wherever a record is (queue, worker's hand, spool)
        self._taken_in = len(spool) if spool is not None else 0
        self._queue_full_logged = False
        self._down_since: float | None = None
        self._down_failures = 0
        self._retry_at = 0.0
        self._retry_wait = settings.retry_initial
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._close_deadline = float("inf")
        self._thread = threading.Thread(target=self._work, name=f"anomalens-sink {name}", daemon=True)

    # ---- for subclasses
    def connect(self) -> None:
        """Open what the sink needs (a client, a server, a file)."""

    def deliver(self, record: dict, payload: str) -> None:
        raise NotImplementedError

    def disconnect(self) -> None:
        """Release what ``connect`` opened."""

    def peer_is_back(self) -> None:
        """Called from any thread when the peer is reachable again: the worker retries now."""
        self._wake.set()

    # ---- lifecycle
    def start(self) -> None:
        self.connect()
        self._thread.start()

    def send(self, record: dict) -> None:
        """Queue ``record``; never waits. A full queue (a peer slower than the line) drops its oldest, counted."""
        with self._counts_lock:
            self._taken_in += 1
        if self._closing.is_set():  # nothing would deliver it
            self._count("dropped")
            return
        while True:
            try:
                self._queue.put_nowait(record)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    continue
                self._count("dropped")
                if not self._queue_full_logged:
                    self._queue_full_logged = True
                    self.log.warning("%s: %d records wait already (the peer is slower than the line): the oldest "
                                     "are dropped and counted", self.name, self.settings.queue_size)

    def begin_close(self, deadline: float) -> None:
        """Ask the worker to deliver what waits until ``deadline`` (``time.monotonic()``), then stop."""
        self._close_deadline = deadline
        self._closing.set()
        self._wake.set()

    def finish_close(self) -> None:
        """Wait for the worker until the deadline; what it could not deliver is spooled or counted dropped."""
        if self._thread.ident is not None:  # started (a sink whose connect failed never was)
            # the worker notices the deadline within one poll; a thread still alive after that is stuck on the peer
            self._thread.join(max(0.0, self._close_deadline - time.monotonic()) + WORKER_POLL_S + 0.1)
        if self._thread.is_alive():
            set_aside = self._set_aside_waiting()
            self.log.warning("%s: still delivering at the close timeout: %d waiting records %s, 1 left in hand",
                             self.name, set_aside, "spooled" if self.spool is not None else "dropped (counted)")
        try:
            self.disconnect()
        except Exception as exc:  # closing must go on for the other sinks
            self.log.warning("%s: %s while closing", self.name, one_line(exc))
        if self.spool is not None:
            lost = self.spool.close()
            if lost:
                self.log.warning("%s: %d records held in memory (no spool folder on disk) are lost at exit, "
                                 "counted as dropped", self.name, lost)

    def stats(self) -> dict[str, int]:
        with self._counts_lock:
            counts = dict(self._counts)
            counts["dropped"] += self.spool.dropped if self.spool is not None else 0
            counts["pending"] = self._taken_in - counts["sent"] - counts["dropped"]
        return counts

    # ---- the worker
    def _count(self, key: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[key] += n

    def _backlog(self) -> bool:
        return self.spool is not None and len(self.spool) > 0

    def _set_aside_waiting(self) -> int:
        """Move every queued record to the spool (or count it dropped without one); returns how many."""
        moved = 0
        while True:
            try:
                record = self._queue.get_nowait()
            except queue.Empty:
                return moved
            moved += 1
            self._keep_or_drop(record)

    def _keep_or_drop(self, record: dict, payload: str | None = None) -> None:
        if self.spool is None:
            self._count("dropped")
            return
        if payload is None:
            payload = self._encode(record)
            if payload is None:
                return
        self.spool.append(payload)
        self._count("spooled")

    def _encode(self, record: dict) -> str | None:
        try:
            return json_text(record, indent=None)
        except (TypeError, ValueError) as exc:
            self._count("dropped")
            self.log.warning("%s: a record that is not JSON was dropped (%s)", self.name, one_line(exc))
            return None

    def _work(self) -> None:
        """The worker thread: a fault of anomalens' own (never expected) is logged once and the worker goes on,
        so that one bad record or a bug never silently stops a sink."""
        reported = False
        while True:
            try:
                self._deliver_until_closed()
                return
            except Exception as exc:
                if not reported:
                    reported = True
                    self.log.error("%s: unexpected error in the delivery thread (%s); it goes on", self.name,
                                   one_line(exc))
                    self.log.debug("%s: the error's traceback", self.name, exc_info=True)
                time.sleep(WORKER_POLL_S)

    def _deliver_until_closed(self) -> None:
        while True:
            now = time.monotonic()
            if self._closing.is_set() and now >= self._close_deadline:
                self._set_aside_waiting()
                return
            if self._backlog():
                self._set_aside_waiting()  # order: what waits in memory is newer than the spool
                if self._down_since is not None and now < self._retry_at:
                    if self._wake.wait(min(self._retry_at - now, WORKER_POLL_S, max(0.0, self._close_deadline - now))):
                        self._wake.clear()
                        self._retry_at = time.monotonic()
                    continue
                line = self.spool.peek()
                if line is None:
                    continue
                if self._attempt(json.loads(line), line):
                    self.spool.pop()
                continue
            try:
                record = self._queue.get(timeout=WORKER_POLL_S)
            except queue.Empty:
                self._queue_full_logged = False
                if self._closing.is_set():
                    return
                continue
            payload = self._encode(record)
            if payload is not None and not self._attempt(record, payload):
                self._keep_or_drop(record, payload)

    def _attempt(self, record: dict, payload: str) -> bool:
        """Deliver one record; True when it is done with (sent, or refused and counted dropped)."""
        try:
            self.deliver(record, payload)
        except RecordRefused as exc:
            self._count("failed")
            self._count("dropped")
            self.log.warning("%s: the peer refused a record (%s); it is dropped and counted", self.name,
                             one_line(exc))
            return True
        except Exception as exc:  # PeerDown, or anything a client library raises: the peer is not usable now
            self._failed(exc)
            return False
        else:
            self._count("sent")
            self._recovered()
            return True

    def _failed(self, exc: Exception) -> None:
        self._count("failed")
        if self.metrics is not None:
            try:
                self.metrics.count_sink_failure(self.name)
            except Exception as metrics_error:  # monitoring must never stop delivery
                self.log.debug("%s: metrics: %s", self.name, one_line(metrics_error))
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self._down_failures = 0
            self._retry_wait = self.settings.retry_initial
            plan = ("records are spooled and retried with back-off" if self.spool is not None
                    else "records are dropped and counted until it works again")
            self.log.warning("%s: down (%s); %s", self.name, one_line(exc), plan)
        else:
            self._retry_wait = min(self._retry_wait * 2, self.settings.retry_max)
        self._down_failures += 1
        self._retry_at = now + self._retry_wait

    def _recovered(self) -> None:
        if self._down_since is None:
            return
        waiting = len(self.spool) if self.spool is not None else 0
        self.log.warning("%s: back after %.1f s (%d failed tries)%s", self.name, time.monotonic() - self._down_since,
                         self._down_failures, f"; replaying {waiting} spooled records" if waiting else "")
        self._down_since = None
        self._retry_wait = self.settings.retry_initial
