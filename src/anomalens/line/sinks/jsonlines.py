"""JSON lines: one result a line on stdout (``jsonl``, ``jsonl:-``) or appended to a file (``jsonl:PATH``).

Each line is written and flushed whole, so ``tail -f`` and a pipe see complete records. The file is
appended to (a log a restart continues), never replaced. A write that fails (a closed pipe, a full disk)
counts the record dropped; one line says so per outage.
"""

from __future__ import annotations

import sys
from pathlib import Path

from anomalens.errors import ConfigError
from anomalens.line.sinks.delivery import PeerDown, Sink, one_line


class JsonLinesSink(Sink):
    def __init__(self, *args, path: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.path = path
        self._file = None

    def connect(self) -> None:
        if self.path == "-":
            return
        path = Path(self.path)
        if path.is_dir():
            raise ConfigError(f"sink {self.name}: {path} is a folder; give a file name, e.g. {path / 'results.jsonl'}")
        if not path.parent.is_dir():
            raise ConfigError(f"sink {self.name}: the folder {path.parent} does not exist")
        try:
            self._file = open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"sink {self.name}: cannot append to {path}: {exc.strerror or exc}") from None

    def deliver(self, record: dict, payload: str) -> None:
        stream = self._file if self._file is not None else sys.stdout
        try:
            stream.write(payload + "\n")
            stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            raise PeerDown(one_line(exc)) from None

    def disconnect(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
