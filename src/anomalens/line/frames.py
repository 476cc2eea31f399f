"""What a source hands the watcher, and the bounded queue between them.

A ``Frame`` is one image to score — a hot-folder file or a decoded video frame — with the moment it became
available (the start of its latency). A source (``Source``) yields frames from its own thread; the watcher
scores them from another. Between the two is a ``FrameQueue`` of a fixed size, with one of two policies:

- **live** (a stream, a camera, a video read at its own frame rate): when the queue is full the OLDEST frame is
  dropped and counted — a camera does not wait, and a verdict on a stale frame is worth less than one on the
  newest; memory stays bounded whatever the model's speed;
- **not live** (a hot folder, a video file): the source waits for room — nothing is ever dropped.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass
class Frame:
    """One image to score, as a source yields it (``pixels`` or ``path``) and the watcher prepares it
    (``input``: the model's (C, H, W) float32; ``size``: the image's own (height, width))."""

    #: The name in the record: a file name relative to the hot folder, or "frame-000123".
    name: str
    #: ``time.perf_counter()`` when the image became available (a frame decoded, a file complete).
    available: float
    #: Decoded RGB pixels (H, W, 3) uint8 — a video frame.
    pixels: Any = None
    #: The file to decode — a hot-folder image.
    path: Path | None = None
    #: Seconds into the stream (a video frame), else None.
    frame_time: float | None = None
    input: Any = None
    size: tuple[int, int] | None = None
    #: What the source needs back when the frame is done (a hot-folder file's size and modification time).
    token: Any = field(default=None, repr=False)


class Source(Protocol):
    """Where frames come from (``anomalens.line.sources.open_source`` builds one from a spec)."""

    #: How records name the source: the hot folder's path, the stream's URL (no password), "camera:0".
    description: str
    #: True: frames arrive whether or not the model keeps up (drop the oldest); False: the source waits.
    live: bool

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        """Yield frames until the source ends or ``stop`` is set (called in the source's own thread)."""
        ...

    def done(self, frame: Frame, record: dict[str, Any]) -> None:
        """``frame`` was scored (``record``): remember it (and move a hot-folder file)."""
        ...

    def skip(self, frame: Frame, reason: str) -> None:
        """``frame`` could not be scored (``reason``, one line): remember it so that it is not tried again."""
        ...

    def counts(self) -> dict[str, int]:
        """The source's own counters (corrupt frames, reconnections, …)."""
        ...

    def close(self) -> None:
        """Save what must survive a restart."""
        ...


class FrameQueue:
    """A bounded FIFO between a source's thread and the scoring thread (module docstring: the two policies).

    ``put`` returns False once the queue is closed (the source should stop); ``get_batch`` returns up to n
    frames, [] on a timeout, None once the queue is closed and empty."""

    def __init__(self, capacity: int, drop_oldest: bool) -> None:
        if capacity < 1:
            raise ValueError(f"the queue holds at least 1 frame, got {capacity}")
        self.capacity = int(capacity)
        self.drop_oldest = bool(drop_oldest)
        self.dropped = 0
        self._items: collections.deque[Frame] = collections.deque()
        self._closed = False
        self._changed = threading.Condition()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, frame: Frame) -> bool:
        with self._changed:
            while not self._closed and len(self._items) >= self.capacity:
                if self.drop_oldest:
                    self._items.popleft()
                    self.dropped += 1
                else:
                    self._changed.wait()
            if self._closed:
                return False
            self._items.append(frame)
            self._changed.notify_all()
            return True

    def get_batch(self, most: int, timeout: float) -> list[Frame] | None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._items:
                if self._closed:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._changed.wait(left)
            batch = [self._items.popleft() for _ in range(min(most, len(self._items)))]
            self._changed.notify_all()
            return batch

    def close(self) -> None:
        """No more frames: ``put`` returns False from now on; what is queued can still be taken."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()


__all__ = ["Frame", "FrameQueue", "Source"]
