"""The watch loop: a source's frames → a bounded queue → the model → one record per image → the sinks.

    from anomalens.line import watch, Watcher
    summary = watch("runs/brick", "rtsp://camera/stream", sinks=["jsonl", "mqtt://broker:1883/line1"])
    watcher = Watcher("runs/brick", "incoming/", move_to_verdict_folders=True).start()   # in a thread
    ...; watcher.stop(); watcher.join()

Two threads: the source's (read a file or decode a frame, then prepare the model input: decode and resize as
``anomalens predict`` does) and the scoring one (``run``: take what is queued, up to a batch, score it, build
the records, send them). The queue between them is bounded (``anomalens.line.frames``: a live source drops
the oldest frame and counts it; a file source waits). Each verdict becomes the line's record
(``make_record``: source, image, frame time, verdict time, score, normalised score, verdict, defect regions,
model id, latency from the image being available to the verdict, sequence number), sent to a ``SinkSet``
(``anomalens.line.sinks``: never blocks scoring). ``stop`` lets the batch in hand finish; then the sinks are
flushed and the source's state saved.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from anomalens.errors import AnomalensError, ConfigError
from anomalens.inference.protocol import model_id as identify_model
from anomalens.line.frames import Frame, FrameQueue, Source
from anomalens.line.regions import record_regions

log = logging.getLogger("anomalens.line")

#: Frames held between decoding and scoring by default: small, so a live verdict is never on a stale frame.
DEFAULT_QUEUE = 4
#: One scored image: (raw score, verdict, anomaly map at the model's size or None).
Scored = tuple[float, bool, "np.ndarray | None"]


def make_record(*, source: str, image: str, frame_time: float | None, score: float, normalized_score: float,
                anomalous: bool, regions: list[dict[str, int]], model_id: str, latency_ms: float,
                sequence: int, when: float | None = None) -> dict[str, Any]:
    """The line's result record (the schema every sink takes): plain JSON values only."""
    stamp = datetime.fromtimestamp(time.time() if when is None else when, tz=timezone.utc)
    return {"source": source, "image": image, "frame_time": frame_time,
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "score": float(score), "normalized_score": float(normalized_score), "anomalous": bool(anomalous),
            "regions": regions, "model_id": model_id, "latency_ms": round(float(latency_ms), 3),
            "sequence": int(sequence)}


class Watcher:
    """Scores what ``source`` delivers with ``model`` and sends a record per image to ``sinks``.

    ``model``: a run or export folder (loaded with ``runtime`` / ``device``), a fitted ``Detector`` or a
    ``Predictor``. ``source``: a spec for ``anomalens.line.sources.open_source`` (a folder, a video file, a
    stream URL, ``camera:N``; ``source_options`` go to it: ``every``, ``fps``, ``realtime``, ``listen``,
    ``state``, ``move_to_verdict_folders``, ``settle_s``, ``poll_s``) or a ``Source``. ``sinks``: spec
    strings (default ``["jsonl"]``: JSON lines on stdout) or an open ``SinkSet`` (left open). ``queue_size``:
    frames held between decoding and scoring. Stops by itself after ``max_images`` images (scored or failed)
    or ``duration`` seconds, or when the source ends (a video file, a hot folder never). ``metrics``: an
    ``anomalens.monitoring.LineMetrics`` to count the queue depth, dropped frames and (unless
    ``count_verdicts`` is False: the service counts them where it keeps its history) verdicts into. ``on_record``: called with each record (after the
    sinks). ``scorer``: images → one ``Scored`` each (the service passes its micro-batcher; default: the model
    itself, in this thread).
    """

    def __init__(self, model: Any, source: str | Path | Source, *, sinks: Sequence[str] | Any = ("jsonl",),
                 runtime: str | None = None, device: str | None = None, queue_size: int = DEFAULT_QUEUE,
                 max_images: int | None = None, duration: float | None = None, spool_dir: str | Path | None = None,
                 model_id: str | None = None, metrics: Any = None, count_verdicts: bool = True,
                 on_record: Callable[[dict[str, Any]], None] | None = None,
                 scorer: Callable[[list[np.ndarray]], list[Scored]] | None = None, **source_options: Any) -> None:
        for name, value in (("queue_size", queue_size), ("max_images", max_images)):
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        if duration is not None and not (float(duration) > 0):
            raise ConfigError(f"duration must be a positive number of seconds, got {duration!r}")
        if isinstance(sinks, str):
            sinks = [sinks]
        if isinstance(sinks, (list, tuple)):
            from anomalens.line.sinks import parse_sink_specs

            parse_sink_specs(list(sinks))  # a bad spec: one line now, before the model is loaded
        if isinstance(source, (str, Path)):
            from anomalens.line.sources import open_source

            source = open_source(source, **source_options)
        elif source_options:
            raise ConfigError(f"{', '.join(sorted(source_options))}: options of a source spec; the source "
                              "given is already open")
        self.source: Source = source
        self.model, self.runtime, self.device = model, runtime, device
        self.sink_specs = sinks
        self.queue = FrameQueue(int(queue_size), drop_oldest=source.live)
        self.max_images, self.duration = max_images, duration
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None
        self.model_id, self.metrics, self.on_record, self.scorer = model_id, metrics, on_record, scorer
        self.count_verdicts = count_verdicts
        self.sequence = int(getattr(source, "sequence", 0))
        self.scored = self.defects = self.failed = 0
        self.sink_stats: dict[str, Any] = {}
        self.elapsed_s = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._source_error: BaseException | None = None
        self.error: BaseException | None = None

    # -- control ---------------------------------------------------------------------------------------
    def start(self) -> Watcher:
        """Run in a background thread (``stop`` then ``join`` to end it; ``error`` holds what stopped it)."""
        self._thread = threading.Thread(target=self._run_in_thread, name="anomalens-watch", daemon=True)
        self._thread.start()
        return self

    def _run_in_thread(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # noqa: BLE001 - kept for the owner of the thread
            self.error = exc
            log.error("watch stopped: %s", " ".join(str(exc).split()) or type(exc).__name__)

    def stop(self) -> None:
        """Finish the image(s) in hand, then flush the sinks and save the state (``run`` returns)."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- the loop ----------------------------------------------------------------------------------------
    def _predictor(self) -> Any:
        from anomalens.inference.loading import as_predictor, load_predictor

        if isinstance(self.model, (str, Path)):
            return load_predictor(self.model, runtime=self.runtime, device=self.device)
        return as_predictor(self.model)

    def _open_sinks(self, model_id: str) -> tuple[Any, bool]:
        if not isinstance(self.sink_specs, (list, tuple)):
            return self.sink_specs, False  # an open SinkSet: its owner closes it
        from anomalens.line.sinks import open_sinks

        return open_sinks(list(self.sink_specs), model_id=model_id, spool_dir=self.spool_dir,
                          metrics=self.metrics), True

    def _produce(self, predictor: Any) -> None:
        """The source's thread: frames → model inputs → the queue (a frame that cannot be read: skipped)."""
        from anomalens.data.io import image_size

        try:
            for frame in self.source.frames(self._stop):
                try:
                    if frame.path is not None:
                        frame.size = image_size(frame.path)
                        frame.input = predictor.load(frame.path)
                    else:
                        frame.size = (int(frame.pixels.shape[0]), int(frame.pixels.shape[1]))
                        frame.input = predictor.load(frame.pixels)
                        frame.pixels = None  # the model input is all that is needed now
                except AnomalensError as exc:
                    self.failed += 1
                    self.source.skip(frame, " ".join(str(exc).split()))
                    continue
                if not self.queue.put(frame):
                    return
        except BaseException as exc:  # noqa: BLE001 - raised again in the scoring thread
            self._source_error = exc
        finally:
            self.queue.close()

    def _default_scorer(self, predictor: Any) -> Callable[[list[np.ndarray]], list[Scored]]:
        from anomalens.inference.rows import predict

        def score(inputs: list[np.ndarray]) -> list[Scored]:
            result = predict(predictor, np.stack(inputs))
            maps = result.maps
            return [(float(result.scores[i]), bool(result.labels[i]), None if maps is None else maps[i])
                    for i in range(len(inputs))]

        return score

    def run(self) -> dict[str, Any]:
        """Watch until stopped, the source ends, ``max_images`` or ``duration``; returns ``summary()``.
        An error of the source (a video that cannot be opened) is raised after the sinks are flushed."""
        started = time.perf_counter()
        predictor = self._predictor()
        model_id = self.model_id or identify_model(predictor)
        rule = predictor.decision_
        score = self.scorer or self._default_scorer(predictor)
        # one pass on a blank image first: the first call of a model is slow (allocations, lazy set-up, the
        # regions' imports), and a verdict on the line should not pay for it
        (_, _, blank_map), = score([np.zeros((predictor.image_channels, *predictor.input_size), np.float32)])
        record_regions(blank_map, rule.pixel_threshold, (2, 2))
        sinks, own_sinks = self._open_sinks(model_id)
        if self.metrics is not None:
            self.metrics.set_model(model_id)
        producer = threading.Thread(target=self._produce, args=(predictor,), name="anomalens-watch-source",
                                    daemon=True)
        deadline = started + self.duration if self.duration is not None else None
        dropped_counted = 0
        try:
            producer.start()
            while not self._stop.is_set():
                if deadline is not None and time.perf_counter() >= deadline:
                    break
                most = predictor.batch_size
                if self.max_images is not None:
                    most = min(most, self.max_images - self.scored - self.failed)
                batch = self.queue.get_batch(most, timeout=0.1)
                if self.metrics is not None:
                    self.metrics.set_queue_depth(len(self.queue))
                    if self.queue.dropped > dropped_counted:
                        self.metrics.count_dropped_frames(self.queue.dropped - dropped_counted)
                        dropped_counted = self.queue.dropped
                if batch is None:
                    break  # the source ended and everything it gave was scored
                if batch:
                    self._score_batch(batch, score, rule, model_id, sinks)
                if self.max_images is not None and self.scored + self.failed >= self.max_images:
                    break
        finally:
            self._stop.set()
            self.queue.close()
            producer.join(timeout=30)
            self.source.close()
            if own_sinks:
                sinks.close(timeout=5)
            self.sink_stats = sinks.stats()
            self.elapsed_s = time.perf_counter() - started
        if self._source_error is not None:
            raise self._source_error
        return self.summary()

    def _score_batch(self, batch: list[Frame], score: Callable[[list[np.ndarray]], list[Scored]], rule: Any,
                     model_id: str, sinks: Any) -> None:
        try:
            results = score([frame.input for frame in batch])
        except AnomalensError as exc:  # a model that cannot score these images: each one skipped, one line
            for frame in batch:
                self.failed += 1
                self.source.skip(frame, f"{frame.name}: {' '.join(str(exc).split())}")
            return
        normalized = rule.normalized([s for s, _, _ in results])
        for i, (frame, (value, anomalous, amap)) in enumerate(zip(batch, results)):
            regions = record_regions(amap, rule.pixel_threshold, frame.size)
            self.sequence += 1
            record = make_record(source=self.source.description, image=frame.name, frame_time=frame.frame_time,
                                 score=value, normalized_score=normalized[i], anomalous=anomalous, regions=regions,
                                 model_id=model_id, latency_ms=(time.perf_counter() - frame.available) * 1000.0,
                                 sequence=self.sequence)
            sinks.send(record)
            self.source.done(frame, record)
            self.scored += 1
            self.defects += bool(anomalous)
            if self.metrics is not None and self.count_verdicts:
                self.metrics.observe_verdict(bool(anomalous), float(value))
            if self.on_record is not None:
                self.on_record(record)

    def summary(self) -> dict[str, Any]:
        """What the watch did: images scored (and defects among them), frames dropped, images that failed,
        the source's own counts, each sink's counts, seconds."""
        return {"scored": self.scored, "defects": self.defects, "dropped": self.queue.dropped, "failed": self.failed,
                **self.source.counts(), "sinks": self.sink_stats, "elapsed_s": round(self.elapsed_s, 3)}


def watch(model: Any, source: str | Path | Source, **options: Any) -> dict[str, Any]:
    """``Watcher(model, source, **options).run()``: watch in this thread until the source ends, ``max_images``,
    ``duration`` or Ctrl-C; returns the summary."""
    watcher = Watcher(model, source, **options)
    try:
        return watcher.run()
    except KeyboardInterrupt:
        return watcher.summary()


def summary_line(summary: dict[str, Any]) -> str:
    """One line for the end of a watch: 'watch: 120 scored (3 defect), 2 dropped, 1 failed in 12.3 s'."""
    extra = "".join(f", {summary[key]} {key.replace('_', ' ')}" for key in ("corrupt_frames", "reconnections")
                    if summary.get(key))
    return (f"watch: {summary['scored']} scored ({summary['defects']} defect), {summary['dropped']} dropped, "
            f"{summary['failed']} failed{extra} in {summary['elapsed_s']:.1f} s")


__all__ = ["DEFAULT_QUEUE", "Scored", "Watcher", "make_record", "summary_line", "watch"]
