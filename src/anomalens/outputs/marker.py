"""What is anomalens': the marker an output folder carries, the kinds of folder and the names each holds,
temporary files and staging folders that interrupted commands leave, and predict's resumable stages.
Read-only except for writing a marker."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import json

from anomalens.outputs.atomic import is_temporary_name, write_json
from anomalens.outputs.names import (CONFIG_FILE, DATASET_OUTPUTS, DEMO_OUTPUTS, ERRORS_CSV, EXPORT_OUTPUTS, MANIFEST_FILE,
                                     MARKER_FILE, METRICS_FILE, PREDICTION_OUTPUTS, PREDICTIONS_CSV, PREDICTIONS_JSONL,
                                     RUN_FILES, SCORES_FILE, TEST_OUTPUTS)

INNER_STAGE_PREFIX = ".anomalens-partial-"
# Temporary names of versions before anomalens.outputs.atomic (NAME.tmp), still cleaned when found.
_LEGACY_TMP_FILES = frozenset(name + ".tmp" for name in (*RUN_FILES, METRICS_FILE, MARKER_FILE))
# What each kind of folder holds, for folders written before the marker existed (and their signature).
KNOWN_NAMES = {
    "run": RUN_FILES | TEST_OUTPUTS | _LEGACY_TMP_FILES,
    "predictions": PREDICTION_OUTPUTS,
    "report": TEST_OUTPUTS,
    "demo": DEMO_OUTPUTS,
    "export": EXPORT_OUTPUTS,
    "dataset": DATASET_OUTPUTS,
    "output": frozenset(),  # a folder of unnamed kind (staged_directory without kind): its marker lists its files
}
# A folder without the marker counts as anomalens' only when it holds its kind's signature and nothing but
# that kind's names: one file of a common name (a user's own metrics.json) must not make --overwrite or
# `test -o` treat the folder as replaceable.
_SIGNATURE = {"run": {CONFIG_FILE}, "predictions": {PREDICTIONS_CSV, PREDICTIONS_JSONL},
              "report": {METRICS_FILE, SCORES_FILE}, "demo": {"index.html", "runs"}, "export": {MANIFEST_FILE},
              "dataset": {"synthetic.json"}}
_ALL_KNOWN = frozenset().union(*KNOWN_NAMES.values()) | {MARKER_FILE}


def is_leftover_file(name: str) -> bool:
    """A temporary file an interrupted writer left (any version's naming)."""
    return is_temporary_name(name) or name in _LEGACY_TMP_FILES


def rows_in(stage: Path) -> int:
    """Complete result rows in a predictions staging folder."""
    try:
        with open(stage / PREDICTIONS_JSONL, "rb") as fh:
            return sum(1 for line in fh if line.endswith(b"\n"))
    except OSError:
        return 0


def is_resumable(path: Path) -> bool:
    """A staging folder an interrupted predict kept for ``--resume`` (rule 7): its marker names the job and
    it holds results."""
    marker = read_marker(path)
    return bool(marker and marker.get("resume") and marker.get("kind") == "predictions"
                and (rows_in(path) or (path / ERRORS_CSV).is_file()))


def resumable_stages(final: Path) -> list[Path]:
    """Kept staging folders of ``final``, newest first."""
    parent, prefix = final.parent, f".{final.name}.partial-"
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except OSError:
        return []
    found = [parent / n for n in names if is_resumable(parent / n)]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(marker, dict) and marker.get("kind") in KNOWN_NAMES and isinstance(marker.get("files"), list):
        return marker
    return None


def write_marker(folder: Path, kind: str, files: Iterable[str], **extra: Any) -> None:
    """Mark ``folder`` as an anomalens ``kind`` folder holding ``files`` (``extra``: e.g. predict's job record)."""
    from anomalens.version import __version__

    write_json(folder / MARKER_FILE, {"anomalens": __version__, "kind": kind,
                                      "files": sorted(set(files) - {MARKER_FILE}), **extra})


def output_kind(folder: str | Path) -> str | None:
    """The kind of anomalens output ``folder`` is (run, predictions, report, demo), or None if not one."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is not None:
        return marker["kind"]
    try:
        names = {n for n in os.listdir(folder)
                 if not n.startswith((INNER_STAGE_PREFIX, ".test-partial-")) and not is_leftover_file(n)}
    except OSError:
        return None
    return next((kind for kind, sign in _SIGNATURE.items() if sign <= names <= KNOWN_NAMES[kind]), None)


def owned_names(folder: Path) -> set[str]:
    """Top-level names in ``folder`` that anomalens wrote (from its marker, else by their known names)."""
    marker = read_marker(folder)
    if marker is not None:
        return set(marker["files"]) | {MARKER_FILE}
    kind = output_kind(folder)
    return set(KNOWN_NAMES[kind]) if kind else set()


def entries(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def is_stage_leftover(path: Path) -> bool:
    """A staging / aside folder anomalens created: a real folder with the marker or only anomalens' names."""
    if path.is_symlink() or not path.is_dir():
        return False
    if read_marker(path) is not None:
        return True
    try:
        return all(n in _ALL_KNOWN or is_leftover_file(n) for n in os.listdir(path))
    except OSError:
        return False
