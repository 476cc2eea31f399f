"""The line's memory: every verdict in a SQLite history, the images in a bounded store, the operator's judgements.

A state folder (``anomalens serve RUN --state DIR``; default :func:`default_state_dir`) holds:

- ``history.sqlite``: one row per scored image (time, name, score, normalised score, verdict, regions, the
  model's id) and the operator's judgement of it, in WAL mode (the service writes while ``feedback export``
  reads);
- ``images/``: the uploaded bytes of the latest images, ``<id>.<format>``.

Judgements (:data:`JUDGEMENTS`): ``false_alarm`` and ``confirmed_defect`` judge a flagged part,
``missed_defect`` a passed one; anything else is refused (``JudgementError``, the service's 400). A later
judgement replaces an earlier one; ``None`` clears it.

Retention (:class:`Retention`: most images, oldest age, most megabytes): past a limit the oldest images are
removed — unjudged ones first, since a judged image is what ``feedback export`` and ``refit`` learn from;
judged ones go only when the unjudged alone cannot bring the store under the limit. The row stays (its
score and judgement are small), with no image. Removal goes through ``anomalens.outputs``.

The folder is created through the output protocol (``staged_directory``, an anomalens ``output`` folder);
an existing folder is reused only when it is one (else one line). Several threads may share a store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from anomalens.errors import AnomalensError, ConfigError
from anomalens.outputs import output_kind, staged_directory, write_bytes
from anomalens.outputs.folders import remove_earlier_files

log = logging.getLogger("anomalens.feedback")

DATABASE_FILE = "history.sqlite"
IMAGES_DIR = "images"
SCHEMA_VERSION = 1

#: judgement → (the verdict it judges: True flagged / False passed, the true label it gives: 0 normal, 1 defect)
JUDGEMENTS: dict[str, tuple[bool, int]] = {
    "false_alarm": (True, 0),
    "confirmed_defect": (True, 1),
    "missed_defect": (False, 1),
}

# Image formats by their first bytes (the service accepts these): suffix, media type.
_FORMATS = ((b"\x89PNG", ".png", "image/png"), (b"\xff\xd8", ".jpg", "image/jpeg"), (b"BM", ".bmp", "image/bmp"),
            (b"II*\x00", ".tif", "image/tiff"), (b"MM\x00*", ".tif", "image/tiff"))
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".bmp": "image/bmp", ".tif": "image/tiff",
               ".webp": "image/webp", ".img": "application/octet-stream"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    unix REAL NOT NULL,
    source TEXT NOT NULL,
    image TEXT NOT NULL,
    model_id TEXT NOT NULL,
    score REAL NOT NULL,
    normalized_score REAL,
    anomalous INTEGER NOT NULL,
    threshold REAL,
    regions TEXT NOT NULL DEFAULT '[]',
    image_file TEXT,
    image_bytes INTEGER NOT NULL DEFAULT 0,
    judgement TEXT,
    judged_at TEXT
);
CREATE INDEX IF NOT EXISTS results_judged ON results (judgement) WHERE judgement IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = ("id", "time", "source", "image", "model_id", "score", "normalized_score", "anomalous", "threshold",
            "regions", "image_file", "judgement", "judged_at")


class JudgementError(AnomalensError):
    """A judgement that does not fit the result (or an unknown result: ``missing``)."""

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True)
class Retention:
    """How much of the line's images the store keeps (the rows stay): ``max_images``, ``max_age_days``,
    ``max_mb``; past any of them the oldest go (unjudged first, module docstring)."""

    max_images: int = 10_000
    max_age_days: float = 30.0
    max_mb: float = 1_000.0

    def validate(self) -> Retention:
        for name, low in (("max_images", 0), ("max_age_days", 0.0), ("max_mb", 0.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low \
                    or value != value or value == float("inf"):
                raise ConfigError(f"history retention {name} must be a number ≥ {low}, got {value!r}")
        if isinstance(self.max_images, float) and not self.max_images.is_integer():
            raise ConfigError(f"history retention max_images must be a whole number, got {self.max_images!r}")
        return self

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 1e6)


def default_state_dir(model_path: str | Path) -> Path:
    """Where ``anomalens serve MODEL`` keeps its history without ``--state``: ``$XDG_STATE_HOME/anomalens/serve/
    <folder name>-<8 hex of its absolute path>`` (``~/.local/state`` without the variable) — never inside the
    run or export, which stays as ``fit`` / ``export`` wrote it."""
    path = Path(model_path).resolve()
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    tag = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    return base / "anomalens" / "serve" / f"{path.name or 'model'}-{tag}"


def image_format(data: bytes) -> tuple[str, str]:
    """(suffix, media type) of image bytes by their signature (``.img`` when unknown)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp", "image/webp"
    for magic, suffix, media in _FORMATS:
        if data.startswith(magic):
            return suffix, media
    return ".img", MEDIA_TYPES[".img"]


def _now() -> tuple[str, float]:
    unix = time.time()
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"), unix


def is_state_dir(path: str | Path) -> bool:
    """True for a folder :class:`FeedbackStore` wrote."""
    path = Path(path)
    return (path / DATABASE_FILE).is_file() and output_kind(path) == "output"


class FeedbackStore:
    """The history and image store of one state folder (module docstring). ``create``: make the folder when
    it does not exist (else ``AnomalensError`` for a folder that is not one)."""

    def __init__(self, folder: str | Path, retention: Retention | None = None, *, create: bool = True) -> None:
        self.folder = Path(folder)
        self.retention = (retention or Retention()).validate()
        self.images = self.folder / IMAGES_DIR
        if not is_state_dir(self.folder):
            if not create:
                raise AnomalensError(f"{self.folder}: not an anomalens state folder (no {DATABASE_FILE}); give the "
                                     "folder 'anomalens serve --state' wrote")
            self._create()
        self._lock = threading.RLock()
        database = self.folder / DATABASE_FILE
        try:
            self._db = sqlite3.connect(database, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")  # readers (feedback export) never block the service
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.row_factory = sqlite3.Row
            kept = self._db.execute("SELECT COUNT(*), COALESCE(SUM(image_bytes), 0) FROM results "
                                    "WHERE image_file IS NOT NULL").fetchone()
        except sqlite3.DatabaseError as exc:
            raise AnomalensError(f"{database}: cannot open the history: {exc}") from None
        self._kept_images, self._kept_bytes = int(kept[0]), int(kept[1])
        self._next_age_check = 0.0

    def _create(self) -> None:
        if self.folder.exists() and (not self.folder.is_dir() or any(self.folder.iterdir())):
            raise AnomalensError(f"{self.folder}: exists and is not an anomalens state folder (no {DATABASE_FILE}); "
                                 "give a new or empty folder for the history")
        try:
            with staged_directory(self.folder, kind="output") as stage:
                (stage / IMAGES_DIR).mkdir()
                db = sqlite3.connect(stage / DATABASE_FILE)
                try:
                    db.executescript(_SCHEMA)
                    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                    db.commit()
                finally:
                    db.close()
        except AnomalensError:
            if not is_state_dir(self.folder):  # else another service created it meanwhile: share it
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writing --------------------------------------------------------------------------------------------
    def add(self, *, image: str, score: float, normalized_score: float | None, anomalous: bool, model_id: str,
            threshold: float | None = None, regions: Sequence[dict[str, int]] | None = None,
            data: bytes | None = None, source: str = "upload") -> int:
        """Record one verdict (and keep ``data``, the image's bytes, within the retention); its id."""
        stamp, unix = _now()
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO results (time, unix, source, image, model_id, score, normalized_score, anomalous, "
                "threshold, regions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (stamp, unix, source, image, model_id, float(score),
                 None if normalized_score is None else float(normalized_score), int(bool(anomalous)),
                 None if threshold is None else float(threshold), json.dumps(list(regions or []))))
            row_id = int(cursor.lastrowid)
            self._db.commit()
        if data and self.retention.max_images > 0 and len(data) <= self.retention.max_bytes:
            self._keep_image(row_id, data)
        return row_id

    def _keep_image(self, row_id: int, data: bytes) -> None:
        name = f"{row_id}{image_format(data)[0]}"
        try:
            write_bytes(self.images / name, data)
        except OSError as exc:  # a full disk costs the picture, never the verdict
            log.warning("history: image %d not kept: %s", row_id, exc.strerror or exc)
            return
        with self._lock:
            self._db.execute("UPDATE results SET image_file = ?, image_bytes = ? WHERE id = ?", (name, len(data), row_id))
            self._db.commit()
            self._kept_images += 1
            self._kept_bytes += len(data)
            self.prune()

    def prune(self) -> int:
        """Apply the retention now; how many images were removed."""
        r = self.retention
        doomed: list[tuple[int, str, int]] = []
        with self._lock:
            now = time.time()
            if now >= self._next_age_check:  # the age limit moves slowly: checked at most once a minute
                self._next_age_check = now + 60.0
                doomed += self._db.execute(
                    "SELECT id, image_file, image_bytes FROM results WHERE image_file IS NOT NULL AND unix < ?",
                    (now - r.max_age_days * 86400.0,)).fetchall()
            over_images = self._kept_images - len(doomed) - r.max_images
            over_bytes = self._kept_bytes - sum(row[2] for row in doomed) - r.max_bytes
            if over_images > 0 or over_bytes > 0:
                skip = {row[0] for row in doomed}
                for row in self._db.execute("SELECT id, image_file, image_bytes FROM results WHERE image_file IS NOT "
                                            "NULL ORDER BY judgement IS NOT NULL, id"):
                    if over_images <= 0 and over_bytes <= 0:
                        break
                    if row[0] in skip:
                        continue
                    doomed.append(row)
                    over_images -= 1
                    over_bytes -= row[2]
            if not doomed:
                return 0
            self._db.executemany("UPDATE results SET image_file = NULL, image_bytes = 0 WHERE id = ?",
                                 [(row[0],) for row in doomed])
            self._db.commit()
            self._kept_images -= len(doomed)
            self._kept_bytes -= sum(row[2] for row in doomed)
        remove_earlier_files(self.images, [row[1] for row in doomed])
        return len(doomed)

    def judge(self, row_id: int, judgement: str | None) -> dict[str, Any]:
        """Set (or clear, None) the operator's judgement of result ``row_id``; the updated item.
        JudgementError when the id is unknown (``missing``) or the judgement does not fit the verdict."""
        if judgement is not None and judgement not in JUDGEMENTS:
            raise JudgementError(f"unknown judgement {judgement!r}; use one of {', '.join(JUDGEMENTS)} (or null to "
                                 "clear it)")
        with self._lock:
            row = self._db.execute("SELECT anomalous FROM results WHERE id = ?", (row_id,)).fetchone()
            if row is None:
                raise JudgementError(f"no result {row_id} in the history", missing=True)
            if judgement is not None and JUDGEMENTS[judgement][0] != bool(row[0]):
                verdict = "flagged as a defect" if row[0] else "passed"
                fits = [name for name, (flagged, _) in JUDGEMENTS.items() if flagged == bool(row[0])]
                raise JudgementError(f"result {row_id} was {verdict}: '{judgement}' does not fit it (use "
                                     f"{' or '.join(fits)})")
            self._db.execute("UPDATE results SET judgement = ?, judged_at = ? WHERE id = ?",
                             (judgement, None if judgement is None else _now()[0], row_id))
            self._db.commit()
        item = self.get(row_id)
        assert item is not None
        return item

    # -- reading --------------------------------------------------------------------------------------------
    @staticmethod
    def _item(row: sqlite3.Row) -> dict[str, Any]:
        item = {key: row[key] for key in _COLUMNS}
        item["anomalous"] = bool(item["anomalous"])
        item["regions"] = json.loads(item["regions"] or "[]")
        item["label"] = JUDGEMENTS[item["judgement"]][1] if item["judgement"] else None
        return item

    def get(self, row_id: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM results WHERE id = ?", (row_id,)).fetchone()
        return None if row is None else self._item(row)

    def page(self, limit: int = 50, before: int | None = None) -> dict[str, Any]:
        """The newest ``limit`` results (older than id ``before``), newest first, with the total and the
        cursor of the next page (None at the end)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM results WHERE id < ? ORDER BY id DESC LIMIT ?",
                (before if before is not None else 2**62, limit + 1)).fetchall()
            total = self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            judged = self._db.execute("SELECT COUNT(*) FROM results WHERE judgement IS NOT NULL").fetchone()[0]
        items = [self._item(row) for row in rows[:limit]]
        following = items[-1]["id"] if len(rows) > limit else None
        return {"items": items, "total": int(total), "judged": int(judged), "next_before": following}

    def judged(self) -> Iterator[dict[str, Any]]:
        """Every judged result, oldest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM results WHERE judgement IS NOT NULL "
                                    "ORDER BY id").fetchall()
        return (self._item(row) for row in rows)

    def image_path(self, item: dict[str, Any]) -> Path | None:
        """The kept image of a result, or None once pruned (or never kept)."""
        if not item.get("image_file"):
            return None
        path = self.images / item["image_file"]
        return path if path.is_file() else None

    def stats(self) -> dict[str, Any]:
        with self._lock:
            total = self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            return {"results": int(total), "images_kept": self._kept_images, "image_mb": round(self._kept_bytes / 1e6, 3),
                    "retention": {"max_images": self.retention.max_images, "max_age_days": self.retention.max_age_days,
                                  "max_mb": self.retention.max_mb}}


def state_for(model_or_state: str | Path, state: str | Path | None = None) -> Path:
    """The state folder to read: ``state`` when given, ``model_or_state`` when it is one, else the default
    state folder of the run / export ``model_or_state`` (``default_state_dir``); AnomalensError saying what to
    pass when there is none."""
    if state is not None:
        if not is_state_dir(state):
            raise AnomalensError(f"{state}: not an anomalens state folder (no {DATABASE_FILE}); give the folder "
                                 "'anomalens serve --state' wrote")
        return Path(state)
    path = Path(model_or_state)
    if is_state_dir(path):
        return path
    if not path.is_dir():
        raise AnomalensError(f"{path}: does not exist (give a run folder, an export or a state folder)")
    default = default_state_dir(path)
    if not is_state_dir(default):
        raise AnomalensError(f"{path}: no history in its default state folder {default}: serve it first "
                             "(anomalens serve), or pass --state DIR with the folder its service used")
    return default
