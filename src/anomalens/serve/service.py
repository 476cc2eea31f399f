"""The service's state, apart from its routes (``app.py`` and the ``*_routes`` modules): the model and its
micro-batcher, the limits, the counters, the decoded-pixel budget shared by all requests (:class:`PixelGate`),
the graceful drain, and what the line keeps of its verdicts: the Prometheus metrics and the drift test
(``anomalens.monitoring``), the history and the operator's feedback (``anomalens.feedback.store``, when
``state_dir`` is set)."""

import asyncio
import collections
import contextlib
import threading
import time
from contextlib import asynccontextmanager
from typing import Any

from anomalens.feedback.store import FeedbackStore, Retention
from anomalens.monitoring import DriftMonitor, LineMetrics, reference_scores
from anomalens.serve.batching import MicroBatcher
from anomalens.serve.inference import ServedModel, elapsed_ms
from anomalens.serve.settings import HostPolicy, ServeSettings
from anomalens.serve.uploads import Upload, UploadError, decode_upload, image_size

__all__ = ["PixelGate", "Service"]


class PixelGate:
    """Decoded pixels held at once by all requests (``max_pixels_in_flight``): a request reserves its images'
    pixels (from their headers) before decoding them and frees them with its answer; one that does not fit
    waits its turn (first come, first served) for at most ``wait_s``, then UploadError(503)."""

    def __init__(self, capacity: int, wait_s: float) -> None:
        self.capacity = int(capacity)
        self.wait_s = float(wait_s)
        self.used = 0
        self._waiters: collections.deque = collections.deque()

    @asynccontextmanager
    async def hold(self, pixels: int):
        await self._acquire(pixels)
        try:
            yield
        finally:
            self.used -= pixels
            self._wake()

    async def _acquire(self, pixels: int) -> None:
        if (not self._waiters or pixels == 0) and self.used + pixels <= self.capacity:
            self.used += pixels
            return
        future = asyncio.get_running_loop().create_future()
        entry = (pixels, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(future, self.wait_s)
        except BaseException as exc:
            if future.done() and not future.cancelled():  # granted just as we gave up: give it back
                self.used -= pixels
            else:
                future.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)
            self._wake()
            if isinstance(exc, TimeoutError):
                raise UploadError(503, f"the service is busy: {self.used} pixels are being decoded or scored "
                                       f"(at most {self.capacity}); send it again shortly",
                                  headers={"Retry-After": "1"}) from None
            raise

    def _wake(self) -> None:
        while self._waiters:
            pixels, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if self.used + pixels > self.capacity:
                break
            self._waiters.popleft()
            self.used += pixels
            future.set_result(None)


class Service:
    """The app's state: the model, the batcher, the settings (limits), the counters."""

    def __init__(self, model: ServedModel, settings: ServeSettings, max_batch: int, decode_threads: int,
                 drift_reference: Any = None) -> None:
        self.model = model
        self.settings = settings
        self.token = settings.token
        self.max_upload_bytes = settings.max_upload_bytes
        self.max_pixels = settings.max_pixels
        self.max_files = settings.max_files
        self.hosts = HostPolicy(settings.host, settings.allowed_hosts)
        self.batcher: MicroBatcher = MicroBatcher(model.run_batch, max_batch=max_batch,
                                                  max_wait_ms=settings.max_wait_ms)
        self.decode_slots = threading.BoundedSemaphore(decode_threads)  # uploads decoded at once (CPU, peak memory)
        self.pixels = PixelGate(settings.max_pixels_in_flight, settings.pixel_wait_s)
        self.started = time.time()
        self.counts = {"images": 0, "requests": 0, "rejected": 0, "failed": 0, "busy": 0, "timeouts": 0,
                       "disconnected": 0}
        self.in_flight = 0  # scoring requests being read or scored (guard.py)
        self.per_client: dict[str, int] = {}
        self.draining = False  # set when a graceful shutdown starts (server.py)
        self.drain_by: float | None = None  # event-loop time by which bodies still arriving are refused
        self.body_waits: set = set()  # the asyncio.timeout of each body read in progress (guard.py)
        self.model_id = model.model_id
        self.metrics = LineMetrics(self.model_id)
        rule = model.decision
        if isinstance(drift_reference, DriftMonitor):  # a monitor set up by the caller (its window, its level)
            self.drift = drift_reference
        else:
            reference = reference_scores(rule.to_dict()) if drift_reference is None else list(drift_reference)
            # Under the minimum-area rule the verdict does not follow the score: no cut at the image threshold.
            self.drift = DriftMonitor(reference, threshold=None if rule.uses_area else float(rule.image_threshold))
        self.metrics.watch_drift(self.drift)
        self.history: FeedbackStore | None = None
        if settings.state_dir is not None:
            self.history = FeedbackStore(settings.state_dir, Retention(
                settings.history_max_images, settings.history_max_age_days, settings.history_max_mb))

    def observe(self, result: dict[str, Any], data: bytes | None, source: str = "upload") -> int | None:
        """One verdict into the metrics, the drift window and the history (with its image); its history id."""
        self.metrics.observe_verdict(bool(result["anomalous"]), float(result["normalized_score"]))
        self.drift.observe(float(result["score"]), bool(result["anomalous"]))
        if self.history is None:
            return None
        return self.history.add(image=result["image"], score=result["score"],
                                normalized_score=result["normalized_score"], anomalous=result["anomalous"],
                                model_id=self.model_id, threshold=result.get("threshold"),
                                regions=result.get("regions") or [], data=data, source=source)

    def render_metrics(self) -> tuple[bytes, str]:
        """The Prometheus exposition, the queue depth read now."""
        self.metrics.set_queue_depth(self.batcher.pending)
        return self.metrics.render()

    def close(self) -> None:
        self.batcher.close()
        if self.history is not None:
            self.history.close()

    def limits(self) -> dict[str, Any]:
        return {**self.settings.limits(), "max_batch": self.batcher.max_batch,
                "max_wait_ms": self.batcher.max_wait_s * 1000.0}

    def load(self) -> dict[str, Any]:
        return {"in_flight": self.in_flight, "clients": len(self.per_client), "pixels_in_flight": self.pixels.used,
                "draining": self.draining}

    def begin_drain(self, grace_s: float | None = None) -> None:
        """A graceful shutdown starts (call it in the server's event loop): new requests get 503; those in
        flight may finish, but a body still arriving after 80 % of ``grace_s`` is answered 503 (guard.py)
        rather than cut off when the server's own time is up."""
        self.draining = True
        if grace_s is not None:
            self.drain_by = asyncio.get_running_loop().time() + 0.8 * grace_s
            for wait in list(self.body_waits):
                when = wait.when()
                if when is None or when > self.drain_by:
                    wait.reschedule(self.drain_by)

    def budget(self, uploads: list[Upload]) -> int:
        """The decoded pixels of a request's images (from their headers), or UploadError(413) over the budget.

        Images over the per-image limit, or whose header cannot be read, count nothing: each gets its own 400."""
        total = 0
        for upload in uploads:
            size = image_size(upload.data)
            if size is not None and size[0] * size[1] <= self.max_pixels:
                total += size[0] * size[1]
        budget = self.settings.max_request_pixels
        if total > budget:
            raise UploadError(413, f"the request's {len(uploads)} image(s) hold {total / 1e6:.4g} M pixels in all, "
                                   f"over the limit of {budget / 1e6:.4g} M pixels per request; send fewer or "
                                   "smaller images per request")
        return total

    def _decode(self, upload: Upload) -> Any:
        with self.decode_slots:
            pixels, orientation = decode_upload(upload.data, upload.name, self.max_pixels)
            prepared = self.model.prepare(pixels)
            prepared.orientation = orientation
            return prepared

    async def predict_one(self, upload: Upload, heatmap: bool, received: float) -> dict[str, Any]:
        """Decode (thread) → batched model (batcher thread) → regions / heatmap (thread). UploadError on bad data."""
        from starlette.concurrency import run_in_threadpool

        start = time.perf_counter()
        prepared = await run_in_threadpool(self._decode, upload)
        decoded = time.perf_counter()
        if self.batcher.closed:  # the lifespan ended (shutdown) while this image was decoded
            raise UploadError(503, "the service is shutting down; send it again to its replacement",
                              headers={"Retry-After": "1"})
        item, info = await asyncio.wrap_future(self.batcher.submit(prepared.input))
        prepared.input = None
        scored = time.perf_counter()
        result = await run_in_threadpool(self.model.result_json, upload.name, prepared, item, heatmap)
        result["timing_ms"] = {
            "decode": round((decoded - start) * 1000.0, 3),
            "queue": round(info.queued_ms, 3),
            "model_batch": round(info.model_ms, 3),
            "batch_size": info.size,
            "postprocess": elapsed_ms(scored),
            "total": elapsed_ms(received),
        }
        self.counts["images"] += 1
        result["history_id"] = await run_in_threadpool(self.observe, result, upload.data)
        return result
