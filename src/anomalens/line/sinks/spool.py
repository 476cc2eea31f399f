"""A bounded on-disk spool: the records a sink could not deliver while its peer was down, replayed oldest
first when the peer returns, and still there after a restart.

Layout of a spool folder: ``segment-000000001.jsonl``, ``segment-000000002.jsonl``, … (one JSON record a
line, at most ``segment_records`` lines each; a new run never appends to an old segment, so a line cut by a
crash stays alone and is skipped, counted), ``cursor.json`` (how many lines of the oldest segment were
delivered, rewritten whole through ``anomalens.outputs.atomic``) and ``lock`` (one process per spool).
A segment is removed once every line of it is delivered. Delivery is at least once: after a crash the
records delivered since the cursor was last written are delivered again.

Bounds: at most ``max_records`` on disk (the oldest dropped and counted beyond); when the disk refuses a
write (full, read-only, a file size limit) one line is logged and records are kept in memory, at most
``memory_records`` (again the oldest dropped and counted), until the memory backlog is delivered and the
disk is tried again.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import threading
from pathlib import Path

from anomalens.errors import AnomalensError
from anomalens.outputs.atomic import write_json
from anomalens.outputs.folders import remove_entry

SEGMENT_GLOB = "segment-*.jsonl"
CURSOR_FILE = "cursor.json"
LOCK_FILE = "lock"


def _segment_number(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


def _readable_line(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


class Spool:
    """Thread-safe FIFO of JSON lines: ``append``, ``peek`` (the oldest), ``pop`` (after it was delivered)."""

    def __init__(self, folder: Path | None, *, name: str, max_records: int, segment_records: int,
                 memory_records: int, log: logging.Logger):
        self.folder = folder
        self.name = name
        self.max_records = max_records
        self.segment_records = segment_records
        self.log = log
        self.dropped = 0  # records this spool let go (bound reached, a damaged line), each counted
        self._lock = threading.Lock()
        self._segments: collections.deque[list] = collections.deque()  # [path, lines written] per segment
        self._head_lines: list[str] = []  # the oldest segment's lines, read when needed
        self._head_done = 0  # lines of the oldest segment already delivered or dropped
        self._on_disk = 0  # records on disk still to deliver
        self._tail = None  # the open file of the newest segment (this run's)
        self._memory: collections.deque[str] = collections.deque()
        self._memory_records = memory_records
        self._memory_full_logged = False
        self._disk_full_logged = False
        self._lock_fd: int | None = None
        self._next_number = 1  # segment numbers are never reused, so a stale cursor never names a new segment
        self._skipped_logged = 0
        self._bound_logged = False  # one line per episode of a full spool, not one per record
        self._closed = False
        if folder is not None:
            self._open_folder(folder)

    # ---- opening: the lock, the segments a previous run left, the cursor
    def _open_folder(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            self._fall_back_to_memory(exc)
            return
        import fcntl

        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise AnomalensError(f"{folder}: this spool folder is in use by another anomalens process; "
                                 "give each watcher its own spool folder") from None
        cursor = self._read_cursor()
        for path in sorted(folder.glob(SEGMENT_GLOB), key=_segment_number):
            with open(path, encoding="utf-8", errors="replace") as handle:
                lines = sum(1 for _ in handle)
            self._segments.append([path, lines])
            self._on_disk += lines
            self._next_number = max(self._next_number, _segment_number(path) + 1)
        if str(cursor.get("segment", "")).startswith("segment-"):
            with contextlib.suppress(ValueError):
                self._next_number = max(self._next_number, _segment_number(Path(cursor["segment"])) + 1)
        if self._segments and cursor.get("segment") == self._segments[0][0].name:
            self._head_done = min(int(cursor.get("delivered", 0)), self._segments[0][1])
            self._on_disk -= self._head_done
        if self._on_disk:
            self.log.info("%s: %d records spooled by an earlier run, delivered first", self.name, self._on_disk)

    def _read_cursor(self) -> dict:
        try:
            cursor = json.loads((self.folder / CURSOR_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return cursor if isinstance(cursor, dict) else {}

    def _write_cursor(self) -> None:
        if not self._segments or self._lock_fd is None:
            return
        try:
            write_json(self.folder / CURSOR_FILE, {"segment": self._segments[0][0].name, "delivered": self._head_done},
                       indent=None)
        except OSError:
            pass  # at worst, records are delivered twice after a crash (at least once, as stated)

    # ---- size
    def __len__(self) -> int:
        with self._lock:
            return self._on_disk + len(self._memory)

    # ---- append
    def append(self, line: str) -> None:
        """Keep ``line`` (one JSON record, no newline). Never raises: what cannot be kept is counted dropped."""
        with self._lock:
            if self._closed:
                self.dropped += 1
                return
            if not self._memory and self._lock_fd is not None:
                try:
                    self._append_to_disk(line)
                    self._disk_full_logged = False
                    return
                except OSError as exc:
                    self._close_tail()
                    self._fall_back_to_memory(exc)
            self._append_to_memory(line)

    def _append_to_disk(self, line: str) -> None:
        if self._on_disk >= self.max_records:
            self._drop_oldest_on_disk()
        if self._tail is None or self._segments[-1][1] >= self.segment_records:
            self._close_tail()
            path = self.folder / f"segment-{self._next_number:09d}.jsonl"
            self._next_number += 1
            self._tail = open(path, "a", encoding="utf-8")
            self._segments.append([path, 0])
        self._tail.write(line + "\n")
        self._tail.flush()  # in the kernel at once: a crash of this process loses nothing written
        self._segments[-1][1] += 1
        self._on_disk += 1

    def _drop_oldest_on_disk(self) -> None:
        if not self._drop_head():
            return
        self._write_cursor()
        self.dropped += 1
        if not self._bound_logged:
            self._bound_logged = True
            self.log.warning("%s: the spool is full (%d records): the oldest are dropped and counted", self.name,
                             self.max_records)

    def _append_to_memory(self, line: str) -> None:
        if len(self._memory) >= self._memory_records:
            self._memory.popleft()
            self.dropped += 1
            if not self._memory_full_logged:
                self._memory_full_logged = True
                self.log.warning("%s: the in-memory spool is full (%d records): the oldest are dropped and counted",
                                 self.name, self._memory_records)
        self._memory.append(line)

    def _fall_back_to_memory(self, exc: OSError) -> None:
        if not self._disk_full_logged:
            self._disk_full_logged = True
            where = self.folder if self.folder is not None else "the spool folder"
            self.log.warning("%s: cannot write the spool in %s (%s): keeping up to %d records in memory instead",
                             self.name, where, exc.strerror or exc, self._memory_records)

    def _close_tail(self) -> None:
        if self._tail is not None:
            with contextlib.suppress(OSError):
                self._tail.close()
            self._tail = None

    # ---- read
    def peek(self) -> str | None:
        """The oldest record kept, or None."""
        with self._lock:
            while self._on_disk:
                line = self._head_line()
                if line is not None and _readable_line(line):
                    return line
                self._skip_head(damaged=line is not None)
            return self._memory[0] if self._memory else None

    def pop(self) -> None:
        """Forget the record ``peek`` returned (it was delivered)."""
        with self._lock:
            if self._closed:
                return
            if self._on_disk:
                self._drop_head()
                self._write_cursor()
                self._bound_logged = False
            elif self._memory:
                self._memory.popleft()
                self._memory_full_logged = False

    def _head_line(self) -> str | None:
        """The next line of the oldest segment (None when the file is shorter than counted)."""
        self._remove_finished_segments()
        if self._head_done >= len(self._head_lines):
            try:
                with open(self._segments[0][0], encoding="utf-8", errors="replace") as handle:
                    self._head_lines = handle.read().splitlines()
            except OSError:
                self._head_lines = []
        return self._head_lines[self._head_done] if self._head_done < len(self._head_lines) else None

    def _skip_head(self, damaged: bool) -> None:
        self._drop_head()
        self._write_cursor()
        self.dropped += 1
        self._skipped_logged += 1
        if self._skipped_logged == 1:  # a deleted segment would otherwise log once per line
            self.log.warning("%s: a %s line of the spool was skipped (counted as dropped; later ones too, "
                             "without a line each)", self.name, "damaged" if damaged else "missing")

    def _drop_head(self) -> bool:
        """Advance past the oldest line on disk; a segment whose lines are all done is removed."""
        if not self._on_disk:
            return False
        self._remove_finished_segments()
        self._head_done += 1
        self._on_disk -= 1
        self._remove_finished_segments()
        return True

    def _remove_finished_segments(self) -> None:
        """Remove the oldest segments whose every line is done (or that hold none: a write that failed)."""
        while self._segments and self._head_done >= self._segments[0][1]:
            if len(self._segments) == 1:  # the newest, all delivered: the next record starts a new segment
                self._close_tail()
            with contextlib.suppress(OSError):
                remove_entry(self._segments[0][0])
            self._segments.popleft()
            self._head_lines, self._head_done = [], 0

    # ---- close
    def close(self) -> int:
        """Keep what is on disk for the next start; returns the records lost with memory (counted dropped)."""
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
            self._write_cursor()
            self._close_tail()
            lost = len(self._memory)
            self.dropped += lost
            self._memory.clear()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # the lock file stays: removing it would race with a new holder
                self._lock_fd = None
            return lost
