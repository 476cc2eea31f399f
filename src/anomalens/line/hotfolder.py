"""A hot folder: the folder a camera's software drops images into, each scored once, when complete.

- **What is a new image**: a visible file with an image suffix directly in the folder (hidden names — the
  temporary files most writers rename into place — and sub-folders are not looked at). A file already scored
  is scored again only if it is replaced by another (its size or modification time changed).
- **Complete**: its size and modification time have stayed the same for ``settle_s`` and it opens for reading.
  A file renamed into place is complete at once and seen once. If the image still cannot be decoded (a
  truncated file, a file that is not an image, a file deleted before it was read) one line is logged and the
  file is remembered as failed: tried again only if it changes.
- **Verdict folders** (``move_to_verdict_folders``): a scored file is moved to ``ok/`` or ``defect/`` (never
  over another file: ``anomalens.outputs.moves``).
- **Resume**: what was scored (name, size, modification time, verdict, where it was moved) is kept in a state
  file, rewritten atomically after each verdict, so a restart neither scores a file twice nor misses one;
  a file scored but not yet moved when the watcher stopped is moved without being scored again. Entries of
  files gone from the folder are forgotten. Files are taken oldest first.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from anomalens.errors import ConfigError
from anomalens.line.frames import Frame
from anomalens.outputs.atomic import write_json

log = logging.getLogger("anomalens.line")

STATE_NAME = ".anomalens-watch.json"
STATE_FORMAT = "anomalens-watch-state"
VERDICT_FOLDERS = {False: "ok", True: "defect"}


def _image_suffixes() -> frozenset[str]:
    from anomalens.data.image_files import IMAGE_SUFFIXES

    return frozenset(IMAGE_SUFFIXES)


class HotFolder:
    """New image files of ``folder`` (module docstring: when a file counts as new and complete, the state)."""

    live = False

    def __init__(self, folder: str | Path, state: str | Path | None = None, move_to_verdict_folders: bool = False,
                 settle_s: float = 0.5, poll_s: float = 0.1) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ConfigError(f"{self.folder}: not a folder")
        for name, value in (("settle_s", settle_s), ("poll_s", poll_s)):
            if not 0 <= float(value) < float("inf"):
                raise ConfigError(f"{name} must be a non-negative number of seconds, got {value!r}")
        self.description = str(self.folder)
        self.settle_s, self.poll_s = float(settle_s), max(0.01, float(poll_s))
        self.move = bool(move_to_verdict_folders)
        self.state_path = Path(state) if state is not None else self.folder / STATE_NAME
        self.suffixes = _image_suffixes()
        self.files: dict[str, dict[str, Any]] = {}  # name → {size, mtime_ns, verdict, moved}
        self.sequence = 0  # the last record's sequence number (a restart continues it)
        self._in_flight: set[str] = set()
        self._watching: dict[str, tuple[int, int, float]] = {}  # name → (size, mtime_ns, unchanged since)
        self._lock = threading.Lock()
        self.failed = 0
        self._load_state()

    # -- the state file ----------------------------------------------------------------------------------
    def _load_state(self) -> None:
        if not self.state_path.exists():
            return
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
            if data.get("format") != STATE_FORMAT or not isinstance(data.get("files"), dict):
                raise ValueError("not an anomalens watch state")
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{self.state_path}: cannot read the watch state ({' '.join(str(exc).split())}); "
                              "remove it to start afresh") from None
        if Path(data.get("folder", "")).resolve() != self.folder.resolve():
            raise ConfigError(f"{self.state_path}: is the state of the hot folder {data.get('folder')}, not of "
                              f"{self.folder}; give each folder its own --state")
        self.files = {str(k): dict(v) for k, v in data["files"].items() if isinstance(v, dict)}
        self.sequence = int(data.get("sequence", 0))
        log.info("%s: resuming: %d file(s) already handled", self.folder, len(self.files))

    def save(self) -> None:
        with self._lock:
            data = {"format": STATE_FORMAT, "version": 1, "folder": str(self.folder.resolve()),
                    "sequence": self.sequence, "files": dict(self.files)}
        write_json(self.state_path, data)

    # -- finding complete new files ------------------------------------------------------------------------
    def _scan(self) -> list[tuple[int, str, int, int]]:
        """(mtime_ns, name, size, mtime_ns) of the image files now in the folder, oldest first."""
        found = []
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            log.warning("%s: cannot list the hot folder (%s)", self.folder, exc.strerror or exc)
            return []
        for entry in entries:
            name = entry.name
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in self.suffixes:
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except OSError:  # deleted between the listing and the stat
                continue
            found.append((st.st_mtime_ns, name, st.st_size, st.st_mtime_ns))
        found.sort()
        return found

    def _is_known(self, name: str, size: int, mtime_ns: int) -> bool:
        entry = self.files.get(name)
        return entry is not None and entry.get("size") == size and entry.get("mtime_ns") == mtime_ns

    def _ready(self, now: float) -> list[tuple[str, int, int]]:
        present = self._scan()
        names = {name for _, name, _, _ in present}
        with self._lock:
            for gone in [n for n in self.files if n not in names and n not in self._in_flight]:
                del self.files[gone]  # moved or deleted: it cannot come back under the same size and time
        for gone in [n for n in self._watching if n not in names]:
            del self._watching[gone]
        ready = []
        for _, name, size, mtime_ns in present:
            if name in self._in_flight or self._is_known(name, size, mtime_ns):
                continue
            seen = self._watching.get(name)
            if seen is None or seen[:2] != (size, mtime_ns):
                self._watching[name] = (size, mtime_ns, now)
                if self.settle_s > 0:
                    continue
                seen = self._watching[name]
            if now - seen[2] < self.settle_s or size == 0:
                continue
            try:
                with open(self.folder / name, "rb"):
                    pass
            except OSError:
                continue  # not readable yet (a writer holding it, on systems that lock files)
            del self._watching[name]
            ready.append((name, size, mtime_ns))
        return ready

    def _finish_moves(self) -> None:
        """Files scored before a restart but not yet moved: moved now, not scored again."""
        if not self.move:
            return
        for name, entry in list(self.files.items()):
            if entry.get("verdict") in ("ok", "defect") and not entry.get("moved") and (self.folder / name).is_file():
                self._move(name, entry)
        self.save()

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        self._finish_moves()
        while not stop.is_set():
            for name, size, mtime_ns in self._ready(time.monotonic()):
                if stop.is_set():
                    return
                with self._lock:
                    self._in_flight.add(name)
                yield Frame(name=name, available=time.perf_counter(), path=self.folder / name, token=(size, mtime_ns))
            stop.wait(self.poll_s)

    # -- after scoring ------------------------------------------------------------------------------------
    def _move(self, name: str, entry: dict[str, Any]) -> None:
        from anomalens.outputs.moves import move_into_folder

        try:
            moved = move_into_folder(self.folder / name, self.folder / entry["verdict"])
        except OSError as exc:
            log.warning("%s: cannot move it to %s/ (%s); it stays", self.folder / name, entry["verdict"],
                        exc.strerror or exc)
            entry["moved"] = False
            return
        entry["moved"] = str(moved.relative_to(self.folder))

    def done(self, frame: Frame, record: dict[str, Any]) -> None:
        size, mtime_ns = frame.token
        entry = {"size": size, "mtime_ns": mtime_ns, "verdict": VERDICT_FOLDERS[bool(record["anomalous"])],
                 "moved": None}
        with self._lock:
            self.files[frame.name] = entry
            self.sequence = max(self.sequence, int(record.get("sequence", 0)))
        if self.move:
            self.save()  # the verdict first: a stop between the two moves the file on restart, unscored
            self._move(frame.name, entry)
        self.save()
        with self._lock:
            self._in_flight.discard(frame.name)

    def skip(self, frame: Frame, reason: str) -> None:
        size, mtime_ns = frame.token
        self.failed += 1
        log.warning("%s (skipped; tried again only if the file changes)", reason)
        with self._lock:
            self.files[frame.name] = {"size": size, "mtime_ns": mtime_ns, "verdict": "failed", "reason": reason}
        self.save()
        with self._lock:
            self._in_flight.discard(frame.name)

    def counts(self) -> dict[str, int]:
        return {"failed_files": self.failed}

    def close(self) -> None:
        self.save()


__all__ = ["STATE_FORMAT", "STATE_NAME", "VERDICT_FOLDERS", "HotFolder"]
