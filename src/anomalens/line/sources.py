"""Sources of images on a line: ``open_source(spec)`` → a hot folder, a video file, a stream or a camera.

- a folder → ``anomalens.line.hotfolder.HotFolder`` (files scored once each, when complete);
- a video file → its frames, as fast as the model takes them (nothing dropped), or at its own frame rate with
  ``realtime`` (then it behaves as a camera: the oldest frame is dropped when the model lags);
- ``rtsp://``, ``rtsps://``, ``rtmp://``, ``http(s)://``, ``udp://``, ``tcp://``, ``srt://`` → a live stream, reconnected with
  back-off when it drops; ``listen`` waits for an encoder to push an RTSP stream to that address instead of
  pulling it (``ffmpeg … -f rtsp rtsp://HOST:PORT/PATH``);
- ``camera:N`` → the local camera ``/dev/videoN`` (Video4Linux2, Linux).

Video is decoded by PyAV (FFmpeg's libraries, H.264 included, from the ``av`` wheel): every ``every``-th
frame, or ``fps`` frames per second of stream time. A frame the decoder reports corrupt, or a packet it
cannot decode, is counted and skipped. PyAV is imported when a video source opens, never before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from anomalens.errors import ConfigError, DataError
from anomalens.line.frames import Frame, Source

log = logging.getLogger("anomalens.line")

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
CAMERA_PREFIX = "camera:"
#: Seconds between reconnection attempts: doubled after each failure, up to the last value.
BACKOFF_S = (0.5, 30.0)
#: FFmpeg's probing of a live stream before its first frame: none. Probing holds the first frames back until it
#: has seen enough of the stream (measured on RTSP at 1 fps: the first three verdicts 1-3 s late with 0.2 s of
#: probing); the decoder reads the stream's parameters from the stream itself.
LIVE_PROBING = {"analyzeduration": "0", "probesize": "32"}


def redact(url: str) -> str:
    """``url`` without its password (records and logs never show a camera's credentials)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{parts.username}:***@{host}", parts.path, parts.query, parts.fragment))


class Selection:
    """Which decoded frames are scored: every ``every``-th, or ``fps`` per second of stream time (a frame is
    taken when its time reaches the next due time; a gap in the stream restarts the schedule)."""

    def __init__(self, every: int | None = None, fps: float | None = None) -> None:
        if every is not None and fps is not None:
            raise ConfigError("give either every (every N-th frame) or fps (a target rate), not both")
        if every is not None and (isinstance(every, bool) or int(every) != every or every < 1):
            raise ConfigError(f"every must be a whole number >= 1, got {every!r}")
        if fps is not None and not (float(fps) > 0 and float(fps) < float("inf")):
            raise ConfigError(f"fps must be a positive number of frames per second, got {fps!r}")
        self.every = int(every) if every is not None else 1
        self.period = 1.0 / float(fps) if fps is not None else None
        self.due: float | None = None

    def take(self, index: int, frame_time: float | None) -> bool:
        if self.period is None or frame_time is None:
            return index % self.every == 0
        if self.due is None or frame_time < self.due - self.period or frame_time > self.due + 2 * self.period:
            self.due = frame_time  # the first frame, or the stream jumped (a reconnection): start again
        if frame_time + 1e-6 < self.due:
            return False
        self.due += self.period
        return True


class VideoSource:
    """Frames of a video file, a stream or a camera through PyAV (module docstring)."""

    def __init__(self, spec: str, *, every: int | None = None, fps: float | None = None, realtime: bool = False,
                 listen: bool = False, open_timeout_s: float = 10.0, read_timeout_s: float = 5.0,
                 reconnect: bool = True) -> None:
        self.spec = spec
        self.selection = Selection(every, fps)
        self.kind = ("camera" if spec.startswith(CAMERA_PREFIX)
                     else "stream" if urlsplit(spec).scheme.lower() in STREAM_SCHEMES else "file")
        if listen and not spec.lower().startswith("rtsp://"):
            raise ConfigError(f"{redact(spec)}: listen waits for an RTSP stream pushed to an rtsp:// address")
        if realtime and self.kind != "file":
            raise ConfigError(f"{redact(spec)}: realtime paces a video file; a stream or a camera is live already")
        self.listen = listen
        self.realtime = realtime
        self.live = self.kind != "file" or realtime
        self.reconnect = reconnect and self.kind != "file"
        self.timeouts = (float(open_timeout_s), float(read_timeout_s))
        self.description = redact(spec)
        self.decoded = 0  # frames decoded since the start (names "frame-%06d" count these)
        self.corrupt = 0
        self.reconnections = 0

    # -- opening ---------------------------------------------------------------------------------------
    def _open(self) -> Any:
        import av

        options: dict[str, str] = {}
        path, fmt = self.spec, None
        if self.kind == "camera":
            path, fmt = f"/dev/video{self.spec[len(CAMERA_PREFIX):]}", "v4l2"
        if self.kind != "file":
            options.update(LIVE_PROBING)
        if self.spec.lower().startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"  # no lost UDP packets, no firewall trouble
        if self.listen:
            options["rtsp_flags"] = "listen"
            options["listen_timeout"] = str(max(1, int(self.timeouts[1])))
        return av.open(path, format=fmt, options=options, timeout=self.timeouts)

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        import av

        delay = BACKOFF_S[0]
        while not stop.is_set():
            try:
                container = self._open()
            except (av.error.FFmpegError, OSError) as exc:
                reason = _reason(exc)
                if self.kind == "file":
                    raise DataError(f"{self.description}: cannot open the video: {reason}") from None
                if self.listen and "timed out" in reason.lower():
                    continue  # nobody pushed a stream yet: keep listening
                log.warning("%s: cannot open the stream (%s); trying again in %.1f s", self.description, reason, delay)
                stop.wait(delay)
                delay = min(delay * 2, BACKOFF_S[1])
                self.reconnections += 1
                continue
            received = False
            try:
                if not container.streams.video:
                    raise DataError(f"{self.description}: has no video stream")
                for frame in self._decode(container, stop):
                    received = True
                    yield frame
            except av.error.FFmpegError as exc:
                if self.kind == "file":
                    raise DataError(f"{self.description}: cannot read the video: {_reason(exc)}") from None
                log.warning("%s: the stream dropped (%s)", self.description, _reason(exc))
            finally:
                container.close()
            if not self.reconnect or stop.is_set():
                return
            if received:
                delay = BACKOFF_S[0]
            log.warning("%s: the stream ended; reconnecting in %.1f s", self.description, delay)
            stop.wait(delay)
            delay = min(delay * 2, BACKOFF_S[1])
            self.reconnections += 1

    def _decode(self, container: Any, stop: threading.Event) -> Iterator[Frame]:
        stream = container.streams.video[0]
        if not self.live:
            stream.thread_type = "AUTO"  # frame threads: faster, but each holds a frame back (latency)
        rate = float(stream.average_rate or stream.base_rate or 25)
        # frame times count from the stream's start (an MPEG-TS stream starts at 1.4 s, say); a live stream opened
        # without probing has no start time: its first time-stamped frame is 0 (an RTSP stream's very first
        # frame may carry no time at all: its record says null rather than a guess)
        origin = float(stream.start_time * stream.time_base) if stream.start_time is not None else None
        last_time: float | None = None
        paced_from: tuple[float, float] | None = None  # (wall clock, stream time) of the first frame, realtime
        for frame in self._decoded(container, stream, stop):
            index = self.decoded
            self.decoded += 1
            if frame.is_corrupt:
                self.corrupt += 1
                continue
            if frame.time is None:
                frame_time = last_time + 1.0 / rate if last_time is not None else None
            else:
                if origin is None:
                    origin = frame.time
                frame_time = frame.time - origin
            last_time = frame_time
            if not self.selection.take(index, frame_time):
                continue
            if self.realtime and frame_time is not None:
                if paced_from is None:
                    paced_from = (time.perf_counter(), frame_time)
                wait = paced_from[0] + (frame_time - paced_from[1]) - time.perf_counter()
                if wait > 0 and stop.wait(wait):
                    return
            available = time.perf_counter()
            yield Frame(name=f"frame-{index:06d}", available=available, pixels=frame.to_ndarray(format="rgb24"),
                        frame_time=None if frame_time is None else round(float(frame_time), 6))

    def _decoded(self, container: Any, stream: Any, stop: threading.Event) -> Iterator[Any]:
        """The decoder's frames; a packet it cannot decode is counted and skipped. When the stream ends or
        breaks, the frames the decoder still holds come out too (H.264 holds one back until it knows the stream
        has no reordering), then the break is raised."""
        import av

        broken = None
        try:
            for packet in container.demux(stream):
                if stop.is_set():
                    return
                try:
                    yield from packet.decode()
                except av.error.InvalidDataError as exc:
                    self.corrupt += 1
                    log.info("%s: a corrupt packet skipped (%s)", self.description, _reason(exc))
        except av.error.FFmpegError as exc:
            broken = exc
        try:
            yield from stream.codec_context.decode(None)
        except av.error.FFmpegError:
            pass  # already flushed (the end of a file)
        if broken is not None:
            raise broken

    # -- the Source protocol's bookkeeping (a video remembers nothing) ---------------------------------
    def done(self, frame: Frame, record: dict[str, Any]) -> None:
        pass

    def skip(self, frame: Frame, reason: str) -> None:
        log.warning("%s", reason)

    def counts(self) -> dict[str, int]:
        return {"frames_decoded": self.decoded, "corrupt_frames": self.corrupt, "reconnections": self.reconnections}

    def close(self) -> None:
        pass


def _reason(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "strerror", None) or exc or type(exc).__name__).split())


def open_source(spec: str | Path, *, every: int | None = None, fps: float | None = None, realtime: bool = False,
                listen: bool = False, state: str | Path | None = None, move_to_verdict_folders: bool = False,
                settle_s: float | None = None, poll_s: float | None = None) -> Source:
    """The source ``spec`` names (module docstring); ConfigError (one line) for what it cannot be.

    Hot folder only: ``state`` (the resume file; default ``FOLDER/.anomalens-watch.json``),
    ``move_to_verdict_folders``, ``settle_s`` (how long a file's size must stay the same before it is read),
    ``poll_s``. Video only: ``every`` / ``fps``, ``realtime``, ``listen``."""
    text = str(spec)
    scheme = urlsplit(text).scheme.lower()
    is_url = scheme in STREAM_SCHEMES and "://" in text
    path = Path(text)
    if not is_url and not text.startswith(CAMERA_PREFIX) and path.is_dir():
        if every is not None or fps is not None or realtime or listen:
            raise ConfigError(f"{path}: is a hot folder; every / fps / realtime / listen apply to video sources")
        from anomalens.line.hotfolder import HotFolder

        options = {k: v for k, v in {"settle_s": settle_s, "poll_s": poll_s}.items() if v is not None}
        return HotFolder(path, state=state, move_to_verdict_folders=move_to_verdict_folders, **options)
    if state is not None or move_to_verdict_folders:
        raise ConfigError(f"{redact(text)}: state and move-to-verdict-folders apply to a hot folder")
    if text.startswith(CAMERA_PREFIX):
        number = text[len(CAMERA_PREFIX):]
        if not number.isdigit():
            raise ConfigError(f"{text}: a camera is camera:N, N the number of /dev/videoN (camera:0)")
    elif not is_url:
        if "://" in text:
            raise ConfigError(f"{redact(text)}: unknown stream scheme {scheme!r}; known: {', '.join(STREAM_SCHEMES)}")
        if not path.exists():
            raise ConfigError(f"{path}: no such folder or video file (a source is a hot folder, a video file, "
                              "a stream URL such as rtsp://HOST/PATH, or camera:N)")
    return VideoSource(text, every=every, fps=fps, realtime=realtime, listen=listen)


__all__ = ["BACKOFF_S", "CAMERA_PREFIX", "STREAM_SCHEMES", "Selection", "VideoSource", "open_source", "redact"]
