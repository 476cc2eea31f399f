"""The prediction stage: the staging folder ``predict`` streams its results into (rule 7 of
``anomalens.outputs.folders``), its files (predictions.csv / .jsonl, errors.csv) and its pictures (heatmap
overlays and masks, each PNG written atomically).

A predict that stops after writing results keeps its stage for ``--resume``: the job (run, ordered image
list, heatmaps mode) is recorded in the marker, rows are appended chunk by chunk once their pictures are on
disk, and a resumed predict skips, image occurrence by occurrence, what the stage already holds.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from anomalens.errors import AnomalensError
from anomalens.outputs.atomic import atomic_path, json_text
from anomalens.outputs.folders import (commit, locked_target, new_stage, refuse_after_stop, refuse_existing,
                                      remove_stage)
from anomalens.outputs.marker import entries, read_marker, resumable_stages, rows_in, write_marker
from anomalens.outputs.names import ERRORS_CSV, MASKS_DIR, HEATMAPS_DIR, PREDICTIONS_CSV, PREDICTIONS_JSONL


def json_line(row: dict[str, Any]) -> str:
    return json_text(row, indent=None)


HEATMAP_MODES = ("anomalous", "all", "none")
#: The columns of one image's result, in order, that every writer of results shares (the local predict, Ray,
#: the service's answer: ``anomalens.inference.rows.result_row``).
RESULT_FIELDS = ("image", "score", "normalized_score", "anomalous", "threshold")
#: The columns of predictions.csv: the result's, then the pictures'.
PREDICTION_FIELDS = [*RESULT_FIELDS, "defect_area_fraction", "heatmap", "mask"]
ERROR_FIELDS = ["image", "error"]


def heatmap_mode(heatmaps: str | bool) -> str:
    if heatmaps is True:  # the API's former boolean: a heatmap for every image
        return "all"
    if heatmaps is False:
        return "none"
    if heatmaps not in HEATMAP_MODES:
        raise ValueError(f"heatmaps must be one of {', '.join(HEATMAP_MODES)}, got {heatmaps!r}")
    return heatmaps


def job_identity(run_dir: str | Path, sources: Sequence[Any], mode: str) -> dict[str, Any]:
    """What a resumed predict must share with the interrupted one: the same run, images (in order), heatmaps."""
    run_hash = None
    for name in ("detector.json", "export.json"):  # a run folder, or an export folder
        with contextlib.suppress(OSError):
            run_hash = hashlib.sha256((Path(run_dir) / name).read_bytes()).hexdigest()
            break
    listing = hashlib.sha256(b"\n".join(os.fsencode(source) for source in sources)).hexdigest()
    return {"run": run_hash, "n_images": len(sources), "images_sha256": listing, "heatmaps": mode}


def read_rows(path: Path, parse) -> list[dict[str, Any]]:
    """Complete rows of a results file a stopped predict left; a torn last line is cut off the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows, good_end = [], 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        row = parse(line.decode("utf-8", "replace"))
        if row is None:
            break
        rows.append(row)
        good_end += len(line)
    if good_end != len(data):
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    return rows


def parse_json_row(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and "image" in row and "score" in row else None


def parse_error_row(line: str) -> dict[str, Any] | None:
    fields = next(csv.reader([line]), [])
    return {"image": fields[0], "error": fields[1]} if len(fields) == 2 and fields != ERROR_FIELDS else None


def still_to_do(keys: Sequence[str], done: Counter) -> list[int]:
    """Indices of ``keys`` (the images in order) not yet done: the first ``done[key]`` occurrences of a key
    are, later ones are not — the same folder given twice is scored twice, resumed or not."""
    left = Counter(done)
    todo = []
    for index, key in enumerate(keys):
        if left[key] > 0:
            left[key] -= 1
        else:
            todo.append(index)
    return todo


class PredictionStage:
    """The staging folder of one predict: its results files, opened for appending, and what it already holds."""

    def __init__(self, path: Path, resumed: bool) -> None:
        self.path, self.resumed = path, resumed
        self.identity: dict[str, Any] | None = None
        self.rows: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.n_rows = 0
        self._files: list[Any] = []

    def begin(self, identity: dict[str, Any]) -> Counter:
        """Check (resumed) or record (new) the job; open the results files. Returns how many times each image
        (by its printed name) is already done — an image listed twice counts twice (see :func:`still_to_do`)."""
        if self.resumed:
            marker = read_marker(self.path) or {}
            before = marker.get("resume") or {}
            for key, what in (("run", "run"), ("images_sha256", "list of images"), ("heatmaps", "--heatmaps setting")):
                if before.get(key) != identity[key]:
                    raise AnomalensError(
                        f"{self.path}: cannot resume: the {what} differs from the interrupted predict's "
                        f"({before.get('n_images', '?')} images then, {identity['n_images']} now; heatmaps "
                        f"{before.get('heatmaps')!r} then); rerun without --resume and with --overwrite to start again")
            self.rows = read_rows(self.path / PREDICTIONS_JSONL, parse_json_row)
            self.errors = read_rows(self.path / ERRORS_CSV, parse_error_row)
        self.identity = identity
        write_marker(self.path, "predictions", [], resume=identity)
        self.n_rows = len(self.rows)
        # The CSV is rebuilt from the JSONL (the record of what is done), so the two always agree.
        self._csv_file = open(self.path / PREDICTIONS_CSV, "w", newline="")
        self._files.append(self._csv_file)
        self._csv = csv.DictWriter(self._csv_file, fieldnames=PREDICTION_FIELDS, extrasaction="ignore")
        self._csv.writeheader()
        self._csv.writerows(self.rows)
        self._jsonl = open(self.path / PREDICTIONS_JSONL, "a")
        self._files.append(self._jsonl)
        self._errors_file = None
        if self.errors:
            self._open_errors(rewrite=True)
        return Counter(row["image"] for row in [*self.rows, *self.errors])

    def _open_errors(self, rewrite: bool = False) -> None:
        self._errors_file = open(self.path / ERRORS_CSV, "w", newline="")
        self._files.append(self._errors_file)
        self._errors = csv.DictWriter(self._errors_file, fieldnames=ERROR_FIELDS)
        self._errors.writeheader()
        if rewrite:
            self._errors.writerows(self.errors)

    def append(self, rows: list[dict[str, Any]], errors: list[dict[str, Any]]) -> None:
        """Append one chunk's results (after its heatmaps are on disk) and flush them."""
        if errors:
            if self._errors_file is None:
                self._open_errors()
            self._errors.writerows(errors)
            self._errors_file.flush()
            self.errors.extend(errors)
        if rows:
            self._csv.writerows(rows)
            self._jsonl.writelines(json_line(row) + "\n" for row in rows)
            self._csv_file.flush()
            self._jsonl.flush()
            self.rows.extend(rows)
            self.n_rows += len(rows)

    def close(self) -> None:
        for fh in self._files:
            with contextlib.suppress(OSError):
                fh.close()
        self._files = []

    @property
    def keep(self) -> bool:
        """Whether a failed predict leaves this folder for --resume (it holds results of a known job)."""
        return self.identity is not None and (self.n_rows > 0 or bool(self.errors))


@contextlib.contextmanager
def prediction_stage(final: Path, overwrite: bool, inputs: Sequence[Any], resume: bool) -> Iterator[PredictionStage]:
    """``staged_directory`` for predict, plus resumption: a predict that stops after writing results keeps its
    staging folder (its marker names the job) and ``resume`` adopts it; see the module docstring."""
    kind = "predictions"
    with locked_target(final, inputs) as final:
        kept = resumable_stages(final)
        if kept and not resume:
            if not overwrite:
                raise AnomalensError(
                    f"{final}: an interrupted predict kept {rows_in(kept[0])} results in {kept[0].name}; pass "
                    "--resume to continue it, or --overwrite to discard them and start again")
            for path in kept:
                remove_stage(path)
            kept = []
        refuse_existing(final, kind, overwrite)
        if kept:
            stage = PredictionStage(kept[0], resumed=True)
        else:
            stage = PredictionStage(new_stage(final, kind), resumed=False)
        try:
            yield stage
            refuse_after_stop()
            stage.close()
            stage.identity = None  # complete: a failure from here on is the protocol's, nothing to resume
            write_marker(stage.path, kind, entries(stage.path))  # the job record goes with it
            commit(stage.path, final, kind, overwrite)
        except BaseException as exc:
            stage.close()
            if not stage.keep:
                remove_stage(stage.path)
                raise
            note = (f"{stage.n_rows} results so far kept in {stage.path}; the same command with --resume "
                    "continues from there")
            if isinstance(exc, AnomalensError):
                try:
                    noted = type(exc)(f"{exc} — {note}")
                except TypeError:  # an error class with another signature: keep it, note beside it
                    noted = None
                if noted is not None:
                    raise noted from None
            if isinstance(exc, OSError):  # one line: the path, the problem, what was kept
                where = f"{os.fsdecode(exc.filename)}: " if exc.filename is not None else ""
                raise AnomalensError(f"{where}{exc.strerror or exc} — {note}") from None
            print(f"anomalens: {note}", file=sys.stderr)
            raise


def write_png(image: np.ndarray, path: Path) -> None:
    """PNG written under a temporary name and renamed: a file in heatmaps/ is always whole. Fast zlib level:
    heatmap overlays barely compress, and level 6 costs several times the time of level 1."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", compress_level=1)


def write_heatmap(stage: Path, stem: str, picture: np.ndarray | None, source: Any, amap: np.ndarray,
                   low: float, high: float, pixel_threshold: float | None, caption: dict[str, Any]) -> dict[str, Any]:
    """One image's overlay (and mask) at its own resolution, with its colour scale and ``caption`` (score,
    normalized_score, threshold, anomalous) burnt in; runs in a writer thread. Returns its row fields."""
    from anomalens.data.pictures import bounded_picture, heatmap_picture
    from anomalens.report.annotated import annotate_heatmap
    from anomalens.report.overlay import render_heatmap

    # A frame too large to send back from the decoding worker is read here; frames above
    # HEATMAP_MAX_PIXELS are drawn scaled down to it (the mask and its area fraction too).
    picture = heatmap_picture(source) if picture is None else bounded_picture(picture)
    overlay, mask = render_heatmap(picture, amap, low, high, pixel_threshold)
    fields: dict[str, Any] = {}
    if mask is not None:
        write_png((mask.view(np.uint8) * 255), stage / MASKS_DIR / f"{stem}_mask.png")
        fields["defect_area_fraction"] = float(np.count_nonzero(mask)) / mask.size
        fields["mask"] = f"{MASKS_DIR}/{stem}_mask.png"
    overlay = annotate_heatmap(overlay, vmin=low, vmax=high, pixel_threshold=pixel_threshold, **caption)
    write_png(overlay, stage / HEATMAPS_DIR / f"{stem}.png")
    fields["heatmap"] = f"{HEATMAPS_DIR}/{stem}.png"
    return fields
