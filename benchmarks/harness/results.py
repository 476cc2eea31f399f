"""One results schema and one markdown table writer.

A suite's results file is one JSON object::

    {"suite": "allocator", "date": "2026-12-01", "machine": {...}, "settings": {...},
     "runs": [{one entry per invocation that added rows}, ...], <named sections>, "results": [{...}, ...]}

``results`` holds the rows, one dict per measurement (the key the main table always used); ``date`` is
that of the latest write; ``machine`` is :func:`harness.machine` of the latest invocation; ``settings``
what the suite was run with; ``runs`` the invocations whose rows the file holds (:class:`Run`: minutes and
load before / after, plus what the suite adds; several where reruns merge rows); a suite may add named
sections for numbers that are not rows (a comparison's speed-of-light reference, say). Files written before the
harness are read through a suite's ``legacy`` function, so ``--report-only`` still rebuilds their tables.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .machine import load_average

_FIELDS = ("suite", "date", "machine", "settings", "runs", "results")


@dataclass
class Results:
    """Rows of one suite with where and how they were measured (the module docstring has the file layout)."""

    suite: str
    rows: list[dict] = field(default_factory=list)
    machine: dict | str = field(default_factory=dict)
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%d"))
    settings: dict = field(default_factory=dict)
    runs: list = field(default_factory=list)
    sections: dict = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------ rows
    def upsert(self, row: dict, *key: str) -> dict:
        """Put ``row`` in place of the row with the same values of ``key`` (or at the end); returns it."""
        for i, old in enumerate(self.rows):
            if all(old.get(k) == row.get(k) for k in key):
                self.rows[i] = row
                return row
        self.rows.append(row)
        return row

    def find(self, **key: Any) -> dict | None:
        """The first row with these values, or None."""
        return next((r for r in self.rows if all(r.get(k) == v for k, v in key.items())), None)

    # ------------------------------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        clash = set(self.sections) & set(_FIELDS)
        if clash:
            raise ValueError(f"{self.suite}: section names {sorted(clash)} are fields of the schema")
        return {"suite": self.suite, "date": self.date, "machine": self.machine, "settings": self.settings,
                "runs": self.runs, **self.sections, "results": self.rows}

    @classmethod
    def from_dict(cls, data: dict, suite: str | None = None,
                  legacy: Callable[[dict], Results] | None = None) -> Results:
        if "suite" not in data:
            if legacy is None:
                raise ValueError(f"{suite}: a results file written before the harness, and no reader for it")
            return legacy(data)
        sections = {k: v for k, v in data.items() if k not in _FIELDS}
        return cls(suite=data["suite"], rows=list(data.get("results") or []), machine=data.get("machine") or {},
                   date=data.get("date", ""), settings=data.get("settings") or {}, runs=list(data.get("runs") or []),
                   sections=sections)

    @classmethod
    def load(cls, path: Path, suite: str, legacy: Callable[[dict], Results] | None = None) -> Results:
        """The results in ``path`` (``legacy`` reads a file written before the harness); empty if missing."""
        path = Path(path)
        if not path.is_file():
            return cls(suite)
        return cls.from_dict(json.loads(path.read_text()), suite, legacy)

    def save(self, path: Path, compact_lists: bool = False) -> Path:
        """Write the JSON file (atomically: a stopped run never leaves half a file). ``compact_lists``: each
        list of numbers on one line (thousands of scores per row)."""
        self.date = time.strftime("%Y-%m-%d")
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False, default=str)
        if compact_lists:
            text = re.sub(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]",
                          lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
        return _write_text(Path(path), text + "\n")

    def write(self, stem: Path, report: str, compact_lists: bool = False) -> tuple[Path, Path]:
        """``stem``.json and ``stem``.md (the markdown ``report``); returns both paths."""
        stem = Path(stem)
        json_path = self.save(stem.with_name(stem.name + ".json"), compact_lists)
        return json_path, write_report(stem.with_name(stem.name + ".md"), report)


@dataclass
class Run:
    """One invocation of a suite, from its start: its entry in ``Results.runs`` says when it ran, how long,
    and the machine's load average before and after (above the cores: other jobs shared them)."""

    started: float = field(default_factory=time.time)
    load_before: list | None = field(default_factory=load_average)

    def record(self, **details: Any) -> dict:
        """The entry of this invocation: ``details`` (what it ran), date, minutes, load before and after."""
        return {**details, "date": time.strftime("%Y-%m-%d"), "minutes": round((time.time() - self.started) / 60, 1),
                "load_average_before": self.load_before, "load_average_after": load_average()}


def describe_run(entry: dict | str) -> str:
    """One line for an entry of ``Results.runs`` (a line written before the harness is returned as it is)."""
    if isinstance(entry, str):
        return entry

    def load(values: Any) -> str:
        return ", ".join(str(v) for v in values) if isinstance(values, (list, tuple)) else str(values)

    when = (f"{entry['minutes']} min" if "minutes" in entry else "") + (f" on {entry['date']}" if entry.get("date") else "")
    return ((when + "; " if when else "") + f"load average {load(entry['load_average_before'])} before, "
            f"{load(entry['load_average_after'])} after")


def write_report(path: Path, report: str) -> Path:
    """Write a markdown report (atomically)."""
    return _write_text(Path(path), report if report.endswith("\n") else report + "\n")


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)
    return path


# ---------------------------------------------------------------------------------------------- markdown
def fmt(value: Any, digits: int | None = 3, none: str = "–") -> str:
    """A table cell: ``none`` for a missing value, floats with ``digits`` decimals (None: as Python prints
    them), anything else as text."""
    if value is None:
        return none
    return f"{value:.{digits}f}" if isinstance(value, float) and digits is not None else str(value)


Column = tuple  # (header, key or function of the row[, digits])


def table(rows: Iterable[dict], columns: Sequence[Column]) -> list[str]:
    """The lines of a markdown table: one column per ``(header, cell[, digits])``, where ``cell`` is a row key
    (its value through :func:`fmt`; ``digits`` default 3, None: as Python prints it) or a function of the row
    that returns the cell (text, or a value for fmt)."""
    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            cell, digits = column[1], column[2] if len(column) > 2 else 3
            value = cell(row) if callable(cell) else row.get(cell)
            cells.append(value if isinstance(value, str) else fmt(value, digits))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(title: str | None, *blocks: str | Sequence[str] | None) -> str:
    """A report: ``# title`` (none when ``title`` is None), then each block (a paragraph, or a list of lines
    such as a table), separated by blank lines; empty blocks are left out."""
    out = [f"# {title}", ""] if title else []
    for block in blocks:
        if not block:
            continue
        out += [block] if isinstance(block, str) else list(block)
        out.append("")
    return "\n".join(out)
