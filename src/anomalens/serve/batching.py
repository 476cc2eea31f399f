"""Dynamic micro-batching: requests that arrive together run through the model together.

Each request hands its decoded image to :meth:`MicroBatcher.submit` and awaits the returned future; one
worker thread owns the model. It takes the first waiting item, then everything else already queued, and
— while the batch is not full — waits at most ``max_wait_ms`` for more. So a lone request pays at most
``max_wait_ms`` of extra latency, and under load (items queue up while the model runs the previous batch)
the model runs full batches without waiting at all. The asyncio event loop only ever awaits a future: it
never blocks on the model.

This module knows nothing about HTTP or about models: ``run_batch`` is any function from a list of items
to a list of results of the same length.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

_STOP = object()


@dataclass
class BatchInfo:
    """What a result learns about the batch it ran in: its size and the model's time for the whole batch."""

    size: int
    model_ms: float
    queued_ms: float


class MicroBatcher(Generic[Item, Result]):
    """Run ``run_batch`` over items submitted from any thread, in batches of at most ``max_batch``.

    ``submit(item)`` returns a ``concurrent.futures.Future`` resolved with ``(result, BatchInfo)``, or with
    the exception ``run_batch`` raised (then every item of that batch gets it). The worker thread starts
    at the first ``submit`` and stops at ``close``; a cancelled future's item is skipped.
    """

    def __init__(self, run_batch: Callable[[list[Item]], Sequence[Result]], max_batch: int = 16,
                 max_wait_ms: float = 5.0, name: str = "anomalens-batcher") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.name = name
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        # Statistics (read by /health and the tests): how many batches of each size ran.
        self.batch_sizes: Counter[int] = Counter()
        self.items_done = 0
        self.busy_s = 0.0

    # -- submitting ----------------------------------------------------------------------------------
    def submit(self, item: Item) -> Future:
        """Queue ``item``; the future resolves to ``(result, BatchInfo)``."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._queue.put((item, future, time.perf_counter()))
        return future

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the worker after the items already queued; later ``submit`` calls raise RuntimeError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout)

    @property
    def closed(self) -> bool:
        """True once ``close`` was called (``submit`` raises RuntimeError)."""
        return self._closed

    @property
    def pending(self) -> int:
        """Items waiting for the model (approximate)."""
        return self._queue.qsize()

    def stats(self) -> dict[str, Any]:
        batches = sum(self.batch_sizes.values())
        return {
            "batches": batches,
            "images": self.items_done,
            "mean_batch_size": round(self.items_done / batches, 3) if batches else None,
            "largest_batch": max(self.batch_sizes) if self.batch_sizes else 0,
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "model_busy_s": round(self.busy_s, 3),
            "queued": self.pending,
        }

    # -- the worker ----------------------------------------------------------------------------------
    def _collect(self, first: tuple) -> tuple[list[tuple], bool]:
        """``first`` plus what is queued (waiting up to ``max_wait_s`` while the batch is not full).
        Returns (batch, stop seen)."""
        batch = [first]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            entries, stop = self._collect(first)
            # A future cancelled while queued (its client went away) costs no model time.
            live = [(item, future, queued) for item, future, queued in entries if future.set_running_or_notify_cancel()]
            if not live:
                continue
            start = time.perf_counter()
            try:
                results = list(self.run_batch([item for item, _, _ in live]))
                if len(results) != len(live):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(live)} items")
            except BaseException as exc:  # noqa: BLE001 - every waiting request must hear about it
                for _, future, _ in live:
                    future.set_exception(exc)
                continue
            finally:
                elapsed = time.perf_counter() - start
                self.busy_s += elapsed
                self.batch_sizes[len(live)] += 1
                self.items_done += len(live)
            model_ms = elapsed * 1000.0
            for (_, future, queued), result in zip(live, results):
                future.set_result((result, BatchInfo(len(live), model_ms, (start - queued) * 1000.0)))
