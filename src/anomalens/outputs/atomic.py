"""Atomic file writes: the one temporary-name and cleanup rule for every file anomalens writes.

A file is written under ``.NAME.<pid>-<random>.tmp`` in its own folder and renamed over ``NAME`` in one
step, so a reader (or a crash) never sees half a file. The temporary name is hidden, unique per writer
(two processes or threads never share one) and recognised by :func:`is_temporary_name`, so the output
protocol can remove what an interrupted writer left. On any failure the temporary file is removed and
``NAME`` is untouched. Torch-free.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

from anomalens.jsonvalues import plain_json

TEMPORARY_SUFFIX = ".tmp"


def temporary_name(path: Path) -> Path:
    """The hidden, unique temporary sibling ``path`` is written under before its rename."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TEMPORARY_SUFFIX}")


def is_temporary_name(name: str) -> bool:
    """True for a name :func:`temporary_name` makes (an interrupted writer's leftover)."""
    if not (name.startswith(".") and name.endswith(TEMPORARY_SUFFIX)):
        return False
    stem = name[1:-len(TEMPORARY_SUFFIX)]
    _, dot, tag = stem.rpartition(".")
    pid, dash, token = tag.partition("-")
    return bool(dot and dash and pid.isdigit() and len(token) == 8)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends without error it replaces ``path``.

    The temporary file is removed whatever happens; ``path`` changes only by the final rename.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """``text`` as UTF-8, newlines as given."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
    return Path(path)


def json_text(data: Any, indent: int | None = 2) -> str:
    """Strict JSON (numpy values as numbers, NaN / infinity as null) — parses with any parser."""
    return json.dumps(plain_json(data), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike[str], data: Any, indent: int | None = 2) -> Path:
    """``data`` as strict JSON (see :func:`json_text`) with a final newline."""
    return write_text(path, json_text(data, indent) + "\n")
