"""The fit → calibrate → test → predict workflow, shared by the CLI and the Python API.

Output-folder protocol
----------------------
Every command that writes files follows the same rules, so that no run can lose a file it did not
create and a crash never leaves a half-written folder that looks complete:

1. **Marker.** Every folder anomalens writes holds ``.anomalens-output.json``: the kind of folder
   (``run``, ``predictions``, ``report``, ``demo``) and the top-level names anomalens wrote into it.
   Folders written before the marker existed are recognised by their files: ``detector.json`` for a
   run, ``predictions.csv`` + ``.jsonl`` for predictions, ``metrics.json`` + ``scores.csv`` for a report,
   and nothing in them but the names that kind of folder holds (else the folder is not anomalens').
2. **Lock.** A command holds an exclusive lock (``fcntl.flock`` on ``.NAME.lock`` next to the output
   folder ``NAME``) from its first check to its last rename. A second command into the same folder fails
   at once with one line ("another anomalens command is writing ..."); the kernel drops the lock when
   its holder dies, and the lock file is removed by whoever holds it last.
3. **Staging.** New folders are built in a hidden sibling ``.NAME.partial-XXXXXXXX`` and renamed into
   place in one step; updates of an existing folder (``test`` into a run) are staged inside it
   (``.anomalens-partial-XXXXXXXX``) and moved in entry by entry, ``metrics.json`` last.
4. **No deletion without --overwrite.** Without it an existing non-empty folder is refused, at the start
   and again at the final rename (a rename never replaces a non-empty folder), so files that appear in
   ``-o`` while a command runs survive and the command fails with one line.
5. **--overwrite replaces only an anomalens folder of the same kind**, never an input of the command
   (the run, the images or data folder, or anything inside or above them), and never deletes a file
   the marker does not list. The old folder is renamed aside (``.NAME.old-XXXXXXXX``), the new one
   renamed in, and only then is the old one deleted: a crash in between leaves one complete folder.
6. **Leftovers are cleaned by the next command on the same folder**, under its lock: staging folders
   (only those carrying the marker, or holding nothing but anomalens' own file names) are deleted, and
   an old folder renamed aside is restored when its replacement never arrived, else deleted. Parent
   folders a failed command created are removed when it fails.
7. **A stopped predict keeps its results for --resume.** ``predict`` streams into its staging folder
   ``.NAME.partial-XXXXXXXX`` (``NAME`` itself still appears only complete, by the one rename of rule 3):
   rows are appended to ``predictions.jsonl`` / ``.csv`` chunk by chunk, each chunk's rows only once its
   heatmaps and masks are on disk (PNGs written under a temporary name and renamed), and the marker carries
   a ``resume`` record of the job (the run's ``detector.json`` hash, the ordered image list's hash, the
   heatmaps mode). When the command stops after writing results — an unreadable image, a dead decoding
   worker, a full disk, Ctrl-C, SIGTERM or ``kill -9`` — that folder is kept (the error line says where and
   how many), and rule 6 does not clean it. ``--resume`` adopts it under the lock: the job must match (else
   one line, nothing changed), a torn last line is cut, the CSV is rebuilt from the JSONL (the record of
   what is done), the images already in it (or in ``errors.csv``) are not read again, and the folder is
   committed by rule 3 when the rest is done. Without ``--resume`` a kept folder makes ``predict`` into
   ``NAME`` fail with one line (no silent restart over kept results); ``--overwrite`` discards it.
   A failure after the results are complete (the final rename) follows rule 3 and keeps nothing.

File-system errors (permission denied, read-only or full file system, ``-o`` naming a file or a broken
symbolic link) surface as ``OSError`` or ``AnomalensError`` naming the path; the CLI prints them as one
line, exit status 2. Checks that can run before the expensive work (the lock, the staging folder, the
target's state) do.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import errno
import json
import logging
import math
import os
import shutil
import stat
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from anomalens.data import AnomalyDataset, ImageRecord, TensorImageDataset, list_images, load_dataset
from anomalens.data.mvtec import masks_unread
from anomalens.catalog import create_detector, load_detector
from anomalens.detector import Detector
from anomalens.jsonvalues import plain_json
from anomalens.names import printable
from anomalens.progress import stage as logged_stage
from anomalens.provenance import environment, file_list_sha256
from anomalens.errors import AnomalensError, DataError
from anomalens.metrics import evaluate
from anomalens.benchmark_protocols import benchmark_metrics

logger = logging.getLogger("anomalens")

RUN_INFO_FILE = "run.json"
MARKER_FILE = ".anomalens-output.json"
INNER_STAGE_PREFIX = ".anomalens-partial-"
TEST_OUTPUTS = frozenset({"metrics.json", "scores.csv", "report.html", "roc.png", "score_histogram.png", "loss_curves.png", "cases",
                          "precision_recall.png", "pixel_roc.png", "pro_curve.png"})
_RUN_FILES = frozenset({"detector.json", "weights.safetensors", RUN_INFO_FILE, "calibration.json"})
_TMP_FILES = frozenset(name + ".tmp" for name in (*_RUN_FILES, "metrics.json"))
# What each kind of folder holds, for folders written before the marker existed (and their signature).
_KNOWN_NAMES = {
    "run": _RUN_FILES | TEST_OUTPUTS | _TMP_FILES,
    "predictions": frozenset({"predictions.csv", "predictions.jsonl", "errors.csv", "heatmaps", "masks"}),
    "report": TEST_OUTPUTS,
    "demo": frozenset({"data", "runs", "index.html"}),
    "output": frozenset(),  # a folder of unnamed kind (staged_directory without kind): its marker lists its files
}
# A folder without the marker counts as anomalens' only when it holds its kind's signature and nothing but
# that kind's names: one file of a common name (a user's own metrics.json) must not make --overwrite or
# `test -o` treat the folder as replaceable.
_SIGNATURE = {"run": {"detector.json"}, "predictions": {"predictions.csv", "predictions.jsonl"},
              "report": {"metrics.json", "scores.csv"}, "demo": {"index.html", "runs"}}
_ALL_KNOWN = frozenset().union(*_KNOWN_NAMES.values()) | {MARKER_FILE, MARKER_FILE + ".tmp"}


# ------------------------------------------------------------------------------- file handling
def _dumps(data: Any, indent: int | None = None) -> str:
    return json.dumps(plain_json(data), indent=indent, allow_nan=False)


def _write_json(path: Path, data: Any) -> None:
    """Strict JSON (no NaN / Infinity), written to a temporary name and renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(_dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(marker, dict) and marker.get("kind") in _KNOWN_NAMES and isinstance(marker.get("files"), list):
        return marker
    return None


def _write_marker(folder: Path, kind: str, files: Iterable[str]) -> None:
    from anomalens.version import __version__

    _write_json(folder / MARKER_FILE, {"anomalens": __version__, "kind": kind,
                                       "files": sorted(set(files) - {MARKER_FILE})})


def output_kind(folder: str | Path) -> str | None:
    """The kind of anomalens output ``folder`` is (run, predictions, report, demo), or None if not one."""
    folder = Path(folder)
    marker = _read_marker(folder)
    if marker is not None:
        return marker["kind"]
    try:
        names = {n for n in os.listdir(folder) if not n.startswith((INNER_STAGE_PREFIX, ".test-partial-"))}
    except OSError:
        return None
    return next((kind for kind, sign in _SIGNATURE.items() if sign <= names <= _KNOWN_NAMES[kind]), None)


def _ours(folder: Path) -> set[str]:
    """Top-level names in ``folder`` that anomalens wrote (from its marker, else by their known names)."""
    marker = _read_marker(folder)
    if marker is not None:
        return set(marker["files"]) | {MARKER_FILE}
    kind = output_kind(folder)
    return set(_KNOWN_NAMES[kind]) if kind else set()


def _entries(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def _is_stage_leftover(path: Path) -> bool:
    """A staging / aside folder anomalens created: a real folder with the marker or only anomalens' names."""
    if path.is_symlink() or not path.is_dir():
        return False
    if _read_marker(path) is not None:
        return True
    try:
        return set(os.listdir(path)) <= _ALL_KNOWN
    except OSError:
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _discard(folder: Path, final: Path) -> None:
    """Delete what anomalens wrote in ``folder`` (an old output renamed aside), then the folder.

    Anything else (a file a user put there) is kept: the folder is renamed to a visible
    ``NAME.kept-XXXXXXXX`` next to ``final`` and a line on stderr says so.
    """
    ours = _ours(folder)
    for name in _entries(folder):
        path = folder / name
        if name in ours or (name.startswith(INNER_STAGE_PREFIX) and _is_stage_leftover(path)):
            _remove(path)
    left = _entries(folder)
    if not left:
        folder.rmdir()
        return
    kept = final.with_name(f"{final.name}.kept-{uuid.uuid4().hex[:8]}")
    os.rename(folder, kept)
    print(f"anomalens: warning: {kept}: kept {len(left)} file(s) anomalens did not write ({', '.join(left[:3])})",
          file=sys.stderr)


def _clean_leftovers(final: Path) -> None:
    """Under ``final``'s lock: remove the staging folders of interrupted commands; restore or delete old ones."""
    parent, prefix = final.parent, f".{final.name}."
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except OSError:
        return
    partial = [parent / n for n in names if n.startswith(prefix + "partial-")]
    old = sorted((parent / n for n in names if n.startswith(prefix + "old-")), key=lambda p: p.stat().st_mtime)
    for path in partial:
        if _is_stage_leftover(path) and not _resumable(path):  # a stopped predict's results wait for --resume
            shutil.rmtree(path, ignore_errors=True)
    old = [p for p in old if _is_stage_leftover(p) or output_kind(p)]
    if old and not os.path.lexists(final):
        os.rename(old.pop(), final)  # its replacement never arrived: the newest complete one comes back
    for path in old:
        _discard(path, final)
    if final.is_dir() and not final.is_symlink():
        _clean_inside(final)


def _clean_inside(folder: Path) -> None:
    """Remove inner staging folders and temporary files that interrupted commands left in ``folder``."""
    if output_kind(folder) is None:
        return
    for name in _entries(folder):
        path = folder / name
        if name.startswith((INNER_STAGE_PREFIX, ".test-partial-")) and _is_stage_leftover(path):
            shutil.rmtree(path, ignore_errors=True)
        elif name in _TMP_FILES and path.is_file() and not path.is_symlink():
            path.unlink()


@contextlib.contextmanager
def _folder_lock(final: Path) -> Iterator[None]:
    """Exclusive lock on the output folder ``final`` (``.NAME.lock`` beside it); fails at once if held."""
    import fcntl

    lock_path = final.parent / f".{final.name}.lock"
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise AnomalensError(f"{final.parent}: cannot write the output folder here: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise AnomalensError(f"{final}: another anomalens command is writing this folder; "
                                     "wait for it to finish or choose another folder") from None
            fd = None  # a file system without locks: the final rename still refuses to replace
        if fd is None:
            break
        try:  # the file we locked must still be the one at lock_path (its last holder unlinks it)
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        if fd is not None:
            os.close(fd)


def _check_target(final: Path) -> Path:
    """``final`` as a folder path to write: a symbolic link to a folder is followed, anything else refused."""
    if final.is_symlink():
        try:
            mode = os.stat(final).st_mode
        except OSError as exc:
            raise AnomalensError(f"{final}: is a symbolic link that cannot be followed ({exc.strerror}); "
                                 "remove it or choose another folder") from None
        if not stat.S_ISDIR(mode):
            raise AnomalensError(f"{final}: exists and is not a folder; choose another output folder")
        return final.resolve()
    if os.path.lexists(final) and not final.is_dir():
        raise AnomalensError(f"{final}: exists and is not a folder; choose another output folder")
    return final


def _input_paths(inputs: Iterable[Any]) -> list[Path]:
    paths = []
    expanded: list[Any] = []
    for item in inputs:  # a DatasetSource (--layout, --normal / --abnormal ...) stands for its folders
        expanded.extend(getattr(item, "paths", None) or [item])
    for item in expanded:
        if isinstance(item, (str, Path)) and os.path.lexists(item):
            with contextlib.suppress(OSError, RuntimeError):
                paths.append(Path(item).resolve())
    return paths


def _check_not_input(final: Path, inputs: Iterable[Any], what: str = "output folder") -> None:
    """Refuse an output folder that is an input of the command, lies inside one or contains one."""
    try:
        target = final.resolve()
    except (OSError, RuntimeError):
        return
    for source in _input_paths(inputs):
        if target == source or target in source.parents or source in target.parents:
            relation = "is" if target == source else ("contains" if target in source.parents else "is inside")
            raise AnomalensError(f"{final}: the {what} {relation} an input of this command ({source}); "
                                 "choose another folder")


def _make_parents(folder: Path) -> list[Path]:
    """Create the missing parents of ``folder``; returns those created, deepest first."""
    missing = []
    parent = folder.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            pass
        except OSError as exc:
            _remove_empty(missing)
            raise AnomalensError(f"{path}: cannot create the output folder here: {exc.strerror}") from None
    return missing


def _remove_empty(folders: Sequence[Path]) -> None:
    for path in folders:  # deepest first; a folder something else wrote into stays
        with contextlib.suppress(OSError):
            path.rmdir()


def _refuse_existing(final: Path, kind: str, overwrite: bool) -> bool:
    """Check an existing ``final`` before any work; True when it has to be replaced (--overwrite)."""
    if not final.is_dir() or not _entries(final):
        return False
    if not overwrite:
        raise AnomalensError(f"{final}: already exists; choose another folder or pass --overwrite")
    found = output_kind(final)
    if found is None:
        raise AnomalensError(f"{final}: is not a folder anomalens wrote (no {MARKER_FILE}); --overwrite replaces only "
                             "anomalens outputs: remove it yourself or choose another folder")
    if found != kind and kind != "output":
        raise AnomalensError(f"{final}: is an anomalens {found} folder, not a {kind} folder; --overwrite replaces "
                             "only a folder of the same kind")
    ours = _ours(final)
    foreign = [n for n in _entries(final) if n not in ours and not n.startswith(INNER_STAGE_PREFIX)]
    if foreign:
        raise AnomalensError(f"{final}: holds files anomalens did not write ({', '.join(foreign[:3])}); "
                             "move them away or choose another folder")
    return True


@contextlib.contextmanager
def staged_directory(final: Path, overwrite: bool = False, kind: str | None = None,
                     inputs: Sequence[Any] = ()) -> Iterator[Path]:
    """Yield a hidden staging sibling of ``final``; on success it becomes ``final`` in one rename.

    Follows the protocol in this module's docstring: ``final``'s lock is held throughout, leftovers of
    interrupted commands are cleaned first, ``inputs`` (paths the command reads) are never the target,
    an existing non-empty ``final`` needs ``overwrite`` and must be an anomalens folder of ``kind`` (any
    kind when None); on error the staging folder and any parent folders created here are removed.
    """
    kind = kind or "output"
    if kind not in _KNOWN_NAMES:
        raise ValueError(f"unknown output kind {kind!r}")
    with _locked_target(final, inputs) as final:
        _refuse_existing(final, kind, overwrite)
        stage = _new_stage(final, kind)
        try:
            yield stage
            _write_marker(stage, kind, _entries(stage))
            _commit(stage, final, kind, overwrite)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise


@contextlib.contextmanager
def _locked_target(final: Path, inputs: Sequence[Any]) -> Iterator[Path]:
    """The checked ``final`` (never an input), its lock held and the leftovers of interrupted commands
    cleaned; parent folders created here are removed again when the block fails."""
    final = _check_target(Path(final))
    _check_not_input(final, inputs)
    created = _make_parents(final)
    try:
        with _folder_lock(final):
            _clean_leftovers(final)
            yield _check_target(final)
    except BaseException:
        _remove_empty(created)
        raise


def _new_stage(final: Path, kind: str) -> Path:
    """A new hidden staging folder beside ``final``, marked as ours (so a crash leaves something cleanable)."""
    stage = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        stage.mkdir()
    except OSError as exc:
        raise AnomalensError(f"{final.parent}: cannot write the output folder here: {exc.strerror}") from None
    try:
        _write_marker(stage, kind, [])
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return stage


def _commit(stage: Path, final: Path, kind: str, overwrite: bool) -> None:
    """Put ``stage`` in place of ``final``: one rename, or (--overwrite) old aside → new in → old deleted."""
    replace = overwrite and final.is_dir() and bool(_entries(final)) and _refuse_existing(_check_target(final), kind, True)
    if not replace:
        try:
            os.rename(stage, final)  # replaces at most an empty folder
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
            raise AnomalensError(f"{final}: was created by something else while this command ran; "
                                 "kept it and discarded this result — choose another folder or pass --overwrite") from None
    aside = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(final, aside)
    try:
        os.rename(stage, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rename(aside, final)
        raise
    _discard(aside, final)


@contextlib.contextmanager
def _staged_update(target: Path, kind: str, inputs: Sequence[Any] = (), last: str | None = None,
                   replaces: Iterable[str] = ()) -> Iterator[Path]:
    """Stage files to add to the folder ``target`` (created as a ``kind`` folder if missing or empty).

    Entries of an existing ``target`` are replaced only when anomalens wrote them; ``replaces`` names
    outputs of the same command that are removed when this one does not write them again.
    """
    target = _check_target(Path(target))
    _check_not_input(target, inputs)
    if not target.is_dir() or not _entries(target):
        with staged_directory(target, kind=kind, inputs=inputs) as stage:
            yield stage
        return
    with _folder_lock(target):
        _clean_inside(target)
        stage = target / f"{INNER_STAGE_PREFIX}{uuid.uuid4().hex[:8]}"
        try:
            stage.mkdir()
        except OSError as exc:
            raise AnomalensError(f"{target}: cannot write here: {exc.strerror}") from None
        try:
            _write_marker(stage, kind, [])
            yield stage
            (stage / MARKER_FILE).unlink()
            _move_into(stage, target, kind=kind, last=last, replaces=replaces)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _move_into(stage: Path, target: Path, kind: str = "report", last: str | None = None,
               replaces: Iterable[str] = ()) -> None:
    """Move every entry of ``stage`` into ``target``, ``last`` at the very end (caller holds the lock).

    An existing entry is replaced only if anomalens wrote it (``target``'s marker); anything else makes
    the whole move fail before a single entry moved. The marker is updated first, so a crash part-way
    leaves every moved entry recorded as anomalens'.
    """
    ours = _ours(target)
    names = sorted(_entries(stage), key=lambda n: n == last)
    clash = [n for n in names if os.path.lexists(target / n) and n not in ours]
    if clash:
        raise AnomalensError(f"{target / clash[0]}: exists and was not written by anomalens; choose another output folder")
    marker = _read_marker(target)
    own_kind = marker["kind"] if marker else (output_kind(target) or kind)
    stale = [n for n in set(replaces) & ours if n not in names and os.path.lexists(target / n)]
    _write_marker(target, own_kind, ((ours - {MARKER_FILE}) | set(names)) - set(stale))
    for name in stale:
        _remove(target / name)
    for name in names:
        entry, dest = stage / name, target / name
        if dest.is_dir() and not dest.is_symlink():
            aside = stage / f".old-{name}"
            os.rename(dest, aside)
            os.rename(entry, dest)
            shutil.rmtree(aside)
        else:
            os.replace(entry, dest)


def _as_dataset(data: str | Path | AnomalyDataset) -> AnomalyDataset:
    return data if isinstance(data, AnomalyDataset) else load_dataset(data)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux/macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# ----------------------------------------------------------------------------------------- fit
def fit_run(
    model: str,
    data: str | Path | AnomalyDataset,
    run_dir: str | Path,
    params: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    fit_with: Callable[[Detector, list[ImageRecord]], dict[str, Any] | None] | None = None,
) -> Detector:
    """Fit ``model`` on the normal training images of ``data`` and save it to ``run_dir``.

    The run folder is checked (and locked) before the data is read; ``overwrite`` replaces only an
    existing anomalens run, never ``data`` itself (see the module docstring). ``fit_with(detector, train)``
    fits the detector in place of ``detector.fit(train)`` (``anomalens.distributed``: on Ray shards, or
    data-parallel under torchrun); the dict it returns is added to ``run.json``.
    """
    detector = create_detector(model, **(params or {}))
    run_dir = Path(run_dir)
    with staged_directory(run_dir, overwrite=overwrite, kind="run", inputs=[data]) as stage:
        with masks_unread():  # the test split's masks are test's business
            dataset = _as_dataset(data)
        if not dataset.train:
            raise DataError(f"{getattr(data, 'name', data)}: no training images")
        start = time.perf_counter()
        engine_info = None
        with logged_stage(f"fit {model} on {len(dataset.train)} training images", enabled=progress):
            if fit_with is None:
                detector.fit(dataset.train, progress=progress)
            else:
                engine_info = fit_with(detector, dataset.train)
        seconds = time.perf_counter() - start
        detector.save(stage)
        keys = {id(r): image_key(r) for r in dataset.train}  # each training file read once more, for both uses
        _write_json(stage / RUN_INFO_FILE, {
            "detector": model,
            "data": str(data) if not isinstance(data, AnomalyDataset) else data.name,
            "n_train_images": len(dataset.train),
            "fit_seconds": round(seconds, 3),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "threshold": detector.threshold_,
            "threshold_source": detector.decision_.description,
            # Which images the saved model has seen (all but an unseen hold-out): calibrate refuses to set a
            # threshold from them.
            "seen_images": sorted(_seen_by_final_model(detector, dataset.train, keys)),
            "provenance": {**environment(detector.device),
                           "training_images_sha256": file_list_sha256([r.name for r in dataset.train],
                                                                      [keys[id(r)] for r in dataset.train])},
            **(engine_info or {}),
        })
    return detector


def image_key(record: ImageRecord) -> str:
    """A short key of an image's content (its file's bytes, or an in-memory array's pixels): the same image
    copied elsewhere has the same key. '' when it cannot be read (the scoring path reports that)."""
    source = record.source
    try:
        data = Path(source).read_bytes() if isinstance(source, (str, Path)) else np.ascontiguousarray(source).tobytes()
    except (OSError, TypeError, ValueError):
        return ""
    return hashlib.sha1(data).hexdigest()[:16]


def _seen_by_final_model(detector: Detector, train: Sequence[ImageRecord], keys: dict[int, str]) -> list[str]:
    """The content keys (``keys``: by ``id`` of each training record) of the images the saved model saw."""
    unseen = {id(r) for r in detector.unseen_normals(train)}
    return [keys[id(r)] for r in train if id(r) not in unseen and keys[id(r)]]


# ------------------------------------------------------------------------------------- helpers
def ground_truth_masks(records: Sequence[ImageRecord], size: tuple[int, int]) -> np.ndarray:
    """Ground-truth masks resized (nearest) to the detector's input size; all False for normals."""
    dataset = TensorImageDataset(records, size)
    return np.stack([dataset[i]["mask"][0].numpy() > 0.5 for i in range(len(records))])


def _predict_with_masks(detector: Detector, records: Sequence[ImageRecord], with_masks: bool, progress: bool):
    """``detector.predict(records)`` and the ground-truth masks at its input size, from one decode of each
    image (in worker processes): (DetectionResult, masks (N, H, W) bool or None). Batches are whole
    multiples of the detector's batch size, so the model sees exactly the batches ``predict`` would give it."""
    from anomalens.data import ImageBatch, iterate_batches

    setting = getattr(detector, "setting", None)  # trained detectors resolve a batch size of None
    batch_size = int((setting("batch_size") if setting else None) or detector.params["batch_size"] or 16)
    chunk = batch_size * max(1, 64 // batch_size)
    height, width = detector.input_size
    # Decoded working images are held a chunk at a time: at most about 64 images' worth of 256² pixels (a
    # 2048² working image for tiling is 64 of those), so memory does not grow with the working size.
    chunk = min(chunk, max(1, (64 * 256 * 256) // (height * width)))
    scores, maps, masks = [], [], []
    batches = iterate_batches(records, detector.input_size, chunk, channels=detector.image_channels,
                              desc=f"{detector.name} test" if progress else None, decode=detector.params.get("decode"))
    for batch in batches:
        s, m = detector.score(ImageBatch(batch["image"]), progress=False)
        scores.append(s)
        if m is not None:
            maps.append(m)
        if with_masks:
            masks.append(batch["mask"][:, 0].numpy() > 0.5)
    result = detector.decision_.apply(np.concatenate(scores), np.concatenate(maps) if maps else None)
    return result, (np.concatenate(masks) if with_masks else None)


def _image_loader(records: Sequence[ImageRecord], size: tuple[int, int]):
    dataset = TensorImageDataset(records, size)
    return lambda i: dataset[i]["image"].permute(1, 2, 0).numpy()


def _reconstruction_loader(detector, records: Sequence[ImageRecord]):
    """For detectors that reconstruct (autoencoders, GANs): indices → their reconstructions as (H, W[, C]) in [0, 1].

    Only the images the report shows are reconstructed, in one batched call (AnoGAN's latent search
    runs once for all of them).
    """
    if not detector.reconstructs:
        return None

    def load(indices: list[int]) -> list[np.ndarray]:
        outputs = np.asarray(detector.reconstruct([records[i] for i in indices])[1], dtype=np.float32)
        # (N, C, H, W) → (H, W, C) each, or (H, W) for one channel
        return [out[0] if out.shape[0] == 1 else np.moveaxis(out, 0, -1) for out in outputs]

    return load


# ---------------------------------------------------------------------------------------- test
def test_run(
    run_dir: str | Path,
    data: str | Path | AnomalyDataset,
    out_dir: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
    report: bool = True,
) -> dict[str, Any]:
    """Score the test split of ``data``; write metrics.json, scores.csv, plots and report.html.

    Returns the metrics. Outputs go into ``out_dir`` (default: the run folder); ``metrics.json`` is
    written last, so its presence means the whole report is there.
    """
    from anomalens.report import per_defect_type_metrics, report_warnings, write_test_report

    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    _check_target(out_dir)
    _check_not_input(out_dir, [data])  # a report never goes into the data it scores
    detector = load_detector(run_dir, device=device)
    dataset = _as_dataset(data)
    records = dataset.test
    if not records:
        raise DataError(f"{data}: has no test images (expected test/good and test/<defect> folders)")
    labels = np.array([r.label for r in records], dtype=np.int64)
    size = detector.input_size
    with _staged_update(out_dir, kind="report", inputs=[data], last="metrics.json", replaces=TEST_OUTPUTS) as stage:
        start = time.perf_counter()
        with logged_stage(f"test {detector.name} on {len(records)} images", enabled=progress):
            result, masks = _predict_with_masks(detector, records, dataset.has_masks, progress)
        seconds = time.perf_counter() - start
        pixel_maps = result.maps if masks is not None else None
        metrics = evaluate(labels, result.scores, detector.threshold_, masks=masks, maps=pixel_maps, predicted=result.labels)
        metrics.update(benchmark_metrics(dataset, result, masks))  # the benchmark's own metrics (LOCO sPRO, ...)
        metrics.update({
            "detector": detector.name,
            "n_images": len(records),
            "n_anomalous": int(labels.sum()),
            "threshold_source": detector.decision_.description,
            "pixel_threshold": detector.pixel_threshold_,
            "min_area": detector.decision_.min_area,
            "test_seconds": round(seconds, 3),
            "images_per_second": round(len(records) / seconds, 2) if seconds > 0 else None,
            "backbone": detector.params.get("backbone"),
            "image_size": list(detector.input_size),
            "device": str(detector.device),
        })
        shared = _calibration_images_in(run_dir, records)
        if shared:
            metrics["calibration_images_in_test"] = shared
            logger.warning("%d of the %d test images were used to calibrate this run's threshold (calibration.json): "
                           "TPR, TNR and balanced accuracy at the threshold are optimistic — test on images the "
                           "calibration did not see", shared, len(records))
        undefined = undefined_metrics(metrics)
        if undefined:
            metrics["undefined"] = undefined
        metrics["per_defect_type"] = per_defect_type_metrics(labels, result.scores, [r.defect_type for r in records],
                                                             result.labels, masks, pixel_maps)
        warnings = report_warnings(metrics, detector.decision_, detector.min_threshold_scores)
        if warnings:
            metrics["warnings"] = warnings
        if report:
            write_test_report(
                stage,
                names=[r.name for r in records],
                defect_types=[r.defect_type for r in records],
                labels=labels,
                scores=result.scores,
                normalized_scores=detector.decision_.normalized(result.scores),
                threshold=detector.threshold_,
                predicted=result.labels,
                metrics=metrics,
                load_image=_image_loader(records, size),
                maps=result.maps,
                masks=masks,
                pixel_threshold=detector.pixel_threshold_,
                title=f"anomalens · {detector.name} · {dataset.name}",
                loss_curves=detector.history_ or None,
                load_reconstructions=_reconstruction_loader(detector, records),
            )
        _write_json(stage / "metrics.json", metrics)  # undefined values (NaN) are written as null
    return metrics


def undefined_metrics(metrics: dict[str, Any]) -> dict[str, str]:
    """{metric: why it is undefined} for the metrics that are NaN (written as null in metrics.json)."""
    n, n_anomalous = metrics.get("n_images"), metrics.get("n_anomalous")
    if n_anomalous == 0:
        why = "no anomalous image in the test set"
    elif n is not None and n_anomalous == n:
        why = "no normal image in the test set"
    else:
        why = "not computable on this test set"
    return {k: why for k, v in metrics.items() if isinstance(v, float) and math.isnan(v)}


# ----------------------------------------------------------------------------------- calibrate
def calibrate_run(
    run_dir: str | Path,
    data: str | Path | AnomalyDataset,
    method: str = "f1",
    clear_border: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Re-set the run's decision rule on labelled data (the test split of ``data``, else its normals).

    method "f1": F1-optimal threshold (normal-score quantile when there are no defects);
    method "area": the seed's minimum-area + threshold search, with the held-out share of ``data``'s
    training normals as validation normals.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        load_detector(run_dir, device=device)  # its message for a missing run
    with _folder_lock(_check_target(run_dir)):  # no fit --overwrite or test of this run meanwhile
        _clean_inside(run_dir)
        detector = load_detector(run_dir, device=device)
        dataset = _as_dataset(data)
        records = dataset.test or _unseen_by_run(run_dir, dataset.train)
        # Only normals the saved model never saw (for PaDiM / PatchCore none: the test split's normals serve).
        normals = detector.unseen_normals(dataset.train) if dataset.train and dataset.test else ()
        with logged_stage(f"calibrate ({method}) on {len(records)} images", enabled=progress):
            info = detector.calibrate(records, method=method, normal_records=normals, clear_border=clear_border,
                                      progress=progress)
        info.update({"method": method, "n_images": len(records), "n_anomalous": int(sum(r.label for r in records)),
                     # which images set the threshold, by content: test warns when it scores them again
                     "image_keys": sorted(k for k in (image_key(r) for r in records) if k)})
        try:
            detector.save_decision(run_dir)
            _write_json(run_dir / "calibration.json", info)
            if _read_marker(run_dir) is not None:
                _write_marker(run_dir, _read_marker(run_dir)["kind"], _ours(run_dir) | {"calibration.json"})
        finally:
            _clean_inside(run_dir)  # a temporary file a failed write left (full disk)
    return info


def _calibration_images_in(run_dir: Path, records: Sequence[ImageRecord]) -> int:
    """How many of ``records`` (by content) set the run's calibrated threshold; 0 without a calibration."""
    try:
        keys = set(json.loads((run_dir / "calibration.json").read_text()).get("image_keys") or ())
    except (OSError, ValueError, AttributeError):
        return 0
    return sum(image_key(r) in keys for r in records) if keys else 0


def _unseen_by_run(run_dir: Path, normals: list[ImageRecord]) -> list[ImageRecord]:
    """``normals`` less the images the run's model was fitted on (listed in run.json).

    A threshold set from images the model has seen is far too low — it flagged every new normal image
    (issue 15: PaDiM's threshold fell from 338 to 4.25) — so those are left out, and when nothing is
    left the calibration is refused with the reason.
    """
    try:
        seen = set(json.loads((run_dir / RUN_INFO_FILE).read_text()).get("seen_images") or ())
    except (OSError, ValueError):
        seen = set()
    keys = [image_key(r) for r in normals] if seen else []
    kept = [r for r, key in zip(normals, keys) if not key or key not in seen] if seen else list(normals)
    if normals and not kept:
        raise DataError(
            f"{run_dir}: every calibration image is a training image of this run (the model has seen them, so a "
            "threshold set from them would flag new normal images); calibrate on labelled test data "
            "(test/good + test/<defect>) or on new normal images"
        )
    return kept


# ------------------------------------------------------------------------------------- predict
HEATMAP_MODES = ("anomalous", "all", "none")
PREDICTION_FIELDS = ["image", "score", "normalized_score", "anomalous", "threshold", "defect_area_fraction", "heatmap",
                     "mask"]
ERROR_FIELDS = ["image", "error"]


def _predict_records(images: str | Path | Sequence[str | Path]) -> list[ImageRecord]:
    paths: list[Path] = []
    for item in [images] if isinstance(images, (str, Path)) else images:
        item = Path(item)
        if item.is_dir():
            found = list_images(item)
            if not found:
                raise DataError(f"{item}: no images found (png, jpg, bmp, tif, webp)")
            paths.extend(found)
        elif item.is_file():
            paths.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    return [ImageRecord(source=p, label=-1, name=p.name) for p in paths]  # names made printable by ImageRecord


def prediction_records(images: str | Path | Sequence[str | Path]) -> list[ImageRecord]:
    """The images ``predict`` scores, in its order: files as given, folders as their sorted images
    (DataError naming a missing path or an empty folder). Shared with ``anomalens.distributed``."""
    return _predict_records(images)


def read_dataset(data: str | Path | AnomalyDataset) -> AnomalyDataset:
    """DATA as ``fit_run`` reads it (a folder, a one-class protocol, a data source or a dataset)."""
    return _as_dataset(data)


def _predictor(run_dir: str | Path, device: str | None, runtime: str | None = None) -> Any:
    """The one place ``predict_images`` gets its model. It uses only ``predict(inputs)``, ``decision_``,
    ``threshold_``, ``pixel_threshold_``, ``localizes``, ``input_size`` and ``image_channels`` of it, so an
    exported model (``runtime`` onnxruntime / openvino on an export folder) stands in for the torch detector."""
    from anomalens.exported import load_model

    return load_model(run_dir, runtime=runtime, device=device)


def _heatmap_mode(heatmaps: str | bool) -> str:
    if heatmaps is True:  # the API's former boolean: a heatmap for every image
        return "all"
    if heatmaps is False:
        return "none"
    if heatmaps not in HEATMAP_MODES:
        raise ValueError(f"heatmaps must be one of {', '.join(HEATMAP_MODES)}, got {heatmaps!r}")
    return heatmaps


def _job_identity(run_dir: str | Path, records: Sequence[ImageRecord], mode: str) -> dict[str, Any]:
    """What a resumed predict must share with the interrupted one: the same run, images (in order), heatmaps."""
    import hashlib

    run_hash = None
    for name in ("detector.json", "export.json"):  # a run folder, or an export folder
        with contextlib.suppress(OSError):
            run_hash = hashlib.sha256((Path(run_dir) / name).read_bytes()).hexdigest()
            break
    listing = hashlib.sha256(b"\n".join(os.fsencode(r.source) for r in records)).hexdigest()
    return {"run": run_hash, "n_images": len(records), "images_sha256": listing, "heatmaps": mode}


def _read_rows(path: Path, parse) -> list[dict[str, Any]]:
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


def _parse_json_row(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and "image" in row and "score" in row else None


def _parse_error_row(line: str) -> dict[str, Any] | None:
    fields = next(csv.reader([line]), [])
    return {"image": fields[0], "error": fields[1]} if len(fields) == 2 and fields != ERROR_FIELDS else None


def _rows_in(stage: Path) -> int:
    try:
        with open(stage / "predictions.jsonl", "rb") as fh:
            return sum(1 for line in fh if line.endswith(b"\n"))
    except OSError:
        return 0


def _resumable(path: Path) -> bool:
    """A staging folder an interrupted predict kept for ``--resume``: its marker names the job, results exist."""
    marker = _read_marker(path)
    return bool(marker and marker.get("resume") and marker.get("kind") == "predictions"
                and (_rows_in(path) or (path / "errors.csv").is_file()))


def _resumable_stages(final: Path) -> list[Path]:
    """Kept staging folders of ``final``, newest first."""
    parent, prefix = final.parent, f".{final.name}.partial-"
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except OSError:
        return []
    found = [parent / n for n in names if _resumable(parent / n)]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


class _PredictionStage:
    """The staging folder of one predict: its results files, opened for appending, and what it already holds."""

    def __init__(self, path: Path, resumed: bool) -> None:
        self.path, self.resumed = path, resumed
        self.identity: dict[str, Any] | None = None
        self.rows: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.n_rows = 0
        self._files: list[Any] = []

    def begin(self, identity: dict[str, Any]) -> set[str]:
        """Check (resumed) or record (new) the job; open the results files. Returns the images already done."""
        if self.resumed:
            marker = _read_marker(self.path) or {}
            before = marker.get("resume") or {}
            for key, what in (("run", "run"), ("images_sha256", "list of images"), ("heatmaps", "--heatmaps setting")):
                if before.get(key) != identity[key]:
                    raise AnomalensError(
                        f"{self.path}: cannot resume: the {what} differs from the interrupted predict's "
                        f"({before.get('n_images', '?')} images then, {identity['n_images']} now; heatmaps "
                        f"{before.get('heatmaps')!r} then); rerun without --resume and with --overwrite to start again")
            self.rows = _read_rows(self.path / "predictions.jsonl", _parse_json_row)
            self.errors = _read_rows(self.path / "errors.csv", _parse_error_row)
        self.identity = identity
        _write_json(self.path / MARKER_FILE, {"anomalens": _version(), "kind": "predictions", "files": [],
                                              "resume": identity})
        self.n_rows = len(self.rows)
        # The CSV is rebuilt from the JSONL (the record of what is done), so the two always agree.
        self._csv_file = open(self.path / "predictions.csv", "w", newline="")
        self._files.append(self._csv_file)
        self._csv = csv.DictWriter(self._csv_file, fieldnames=PREDICTION_FIELDS, extrasaction="ignore")
        self._csv.writeheader()
        self._csv.writerows(self.rows)
        self._jsonl = open(self.path / "predictions.jsonl", "a")
        self._files.append(self._jsonl)
        self._errors_file = None
        if self.errors:
            self._open_errors(rewrite=True)
        return {row["image"] for row in self.rows} | {row["image"] for row in self.errors}

    def _open_errors(self, rewrite: bool = False) -> None:
        self._errors_file = open(self.path / "errors.csv", "w", newline="")
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
            self._jsonl.writelines(_dumps(row) + "\n" for row in rows)
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


def _version() -> str:
    from anomalens.version import __version__

    return __version__


@contextlib.contextmanager
def _prediction_stage(final: Path, overwrite: bool, inputs: Sequence[Any], resume: bool) -> Iterator[_PredictionStage]:
    """``staged_directory`` for predict, plus resumption: a predict that stops after writing results keeps its
    staging folder (its marker names the job) and ``resume`` adopts it; see the module docstring."""
    kind = "predictions"
    with _locked_target(final, inputs) as final:
        kept = _resumable_stages(final)
        if kept and not resume:
            if not overwrite:
                raise AnomalensError(
                    f"{final}: an interrupted predict kept {_rows_in(kept[0])} results in {kept[0].name}; pass "
                    "--resume to continue it, or --overwrite to discard them and start again")
            for path in kept:
                shutil.rmtree(path, ignore_errors=True)
            kept = []
        _refuse_existing(final, kind, overwrite)
        if kept:
            stage = _PredictionStage(kept[0], resumed=True)
        else:
            stage = _PredictionStage(_new_stage(final, kind), resumed=False)
        try:
            yield stage
            stage.close()
            stage.identity = None  # complete: a failure from here on is the protocol's, nothing to resume
            _write_marker(stage.path, kind, _entries(stage.path))  # the job record goes with it
            _commit(stage.path, final, kind, overwrite)
        except BaseException as exc:
            stage.close()
            if not stage.keep:
                shutil.rmtree(stage.path, ignore_errors=True)
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


def _write_png(image: np.ndarray, path: Path) -> None:
    """PNG written under a temporary name and renamed: a file in heatmaps/ is always whole. Fast zlib level:
    heatmap overlays barely compress, and level 6 costs several times the time of level 1."""
    from PIL import Image

    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(image).save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


def _write_heatmap(stage: Path, stem: str, picture: np.ndarray | None, source: Any, amap: np.ndarray,
                   low: float, high: float, pixel_threshold: float | None, caption: dict[str, Any]) -> dict[str, Any]:
    """One image's overlay (and mask) at its own resolution, with its colour scale and ``caption`` (score,
    normalized_score, threshold, anomalous) burnt in; runs in a writer thread. Returns its row fields."""
    from anomalens.data.io import read_pixels
    from anomalens.data.torch_dataset import display_picture
    from anomalens.report import annotate_heatmap, render_heatmap

    if picture is None:  # a frame too large to send back from the decoding worker is read here
        picture = display_picture(read_pixels(source))
    overlay, mask = render_heatmap(picture, amap, low, high, pixel_threshold)
    fields: dict[str, Any] = {}
    if mask is not None:
        _write_png((mask.view(np.uint8) * 255), stage / "masks" / f"{stem}_mask.png")
        fields["defect_area_fraction"] = float(np.count_nonzero(mask)) / mask.size
        fields["mask"] = f"masks/{stem}_mask.png"
    overlay = annotate_heatmap(overlay, vmin=low, vmax=high, pixel_threshold=pixel_threshold, **caption)
    _write_png(overlay, stage / "heatmaps" / f"{stem}.png")
    fields["heatmap"] = f"heatmaps/{stem}.png"
    return fields


def default_writers() -> int:
    """Heatmap writer threads: the cores left by the model (at least 1); PNG encoding and the numpy work
    of the overlays release the GIL."""
    from anomalens.cores import available_cores

    return max(1, min(8, available_cores() - 1))


def predict_images(
    run_dir: str | Path,
    images: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    device: str | None = None,
    overwrite: bool = False,
    heatmaps: str | bool = "anomalous",
    chunk_size: int = 64,
    progress: bool = True,
    resume: bool = False,
    skip_bad: bool = False,
    workers: int | None = None,
    writers: int | None = None,
    runtime: str | None = None,
) -> list[dict[str, Any]]:
    """Score new images; stream predictions.csv / .jsonl and heatmap overlays + masks into ``out_dir``.

    Each image is read and decoded once, in ``workers`` processes (None: ``default_workers()``), for both
    the model input and its heatmap. Results are appended chunk by chunk (``chunk_size`` images) and
    flushed; heatmaps are written by ``writers`` threads while the model scores the next chunk, and a
    chunk's rows are appended once its pictures are on disk. ``heatmaps``: "anomalous" (the flagged
    images, default), "all" or "none" (True / False: all / none).

    Heatmaps are at the image's own resolution, on one fixed colour scale for the whole run: from the
    typical value on normal images (blue) to twice the distance up to the pixel threshold (red), so the
    threshold sits mid-scale and colours mean the same thing in every picture.

    An unreadable image stops the command with a DataError naming it, after the results of the images
    before it are written (``skip_bad``: it is listed in errors.csv and the rest goes on). A predict
    that stops after writing results keeps its staging folder; ``resume`` continues it without scoring
    its images again (see the module docstring). Returns every row (those of a resumed run included).

    ``run_dir`` is a run folder (torch) or an export folder (``anomalens export``); ``runtime`` (torch,
    onnxruntime, openvino; None: by the folder) chooses what runs it.
    """
    from concurrent.futures import ThreadPoolExecutor

    from anomalens.data import ImageBatch, iterate_decoded

    mode = _heatmap_mode(heatmaps)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    inputs = [run_dir, *([images] if isinstance(images, (str, Path)) else images)]
    with _prediction_stage(Path(out_dir), overwrite, inputs, resume) as stage:
        model = _predictor(run_dir, device, runtime)
        records = _predict_records(images)
        done = stage.begin(_job_identity(run_dir, records, mode))
        todo = [i for i, r in enumerate(records) if printable(r.source) not in done]
        if progress:
            logger.info("predict: %d images%s", len(records), f", {len(records) - len(todo)} done before" if done else "")
        drawing = mode != "none" and model.localizes
        if drawing:
            for name in ("heatmaps", "masks"):
                (stage.path / name).mkdir(exist_ok=True)
        low, high = model.decision_.heatmap_colour_range()
        torch_model = isinstance(model, Detector)
        device_type = model.device.type if torch_model else "cpu"
        pending: list[tuple[list[dict[str, Any]], list[Any], list[dict[str, Any]]]] = []

        def settle(keep: int) -> None:
            """Append the rows of finished chunks, in order, until at most ``keep`` chunks are in flight."""
            while pending and (len(pending) > keep or all(f.done() for f in pending[0][1])):
                rows, futures, errors = pending.pop(0)
                for row, future in zip([r for r in rows if "_pending" in r], futures):
                    row.pop("_pending")
                    row.update(future.result())
                stage.append(rows, errors)

        with ThreadPoolExecutor(max_workers=writers or default_writers(), thread_name_prefix="heatmaps") as pool:
            try:
                batches = iterate_decoded(
                    [records[i] for i in todo], model.input_size, chunk_size, channels=model.image_channels,
                    pictures=drawing, num_workers=workers, pin_memory=device_type == "cuda",
                    desc="predict" if progress else None, decode=model.params.get("decode"))
                for batch in batches:
                    bad = [k for k, error in enumerate(batch.errors) if error is not None]
                    stop = None if skip_bad or not bad else batch.errors[bad[0]]
                    good = [k for k in range(len(batch.indices)) if batch.errors[k] is None and (stop is None or k < bad[0])]
                    errors = [{"image": printable(records[todo[batch.indices[k]]].source), "error": batch.errors[k]}
                              for k in bad] if skip_bad else []
                    rows: list[dict[str, Any]] = []
                    futures: list[Any] = []
                    if good:
                        images_in = batch.images[good] if len(good) < len(batch.indices) else batch.images
                        if torch_model:
                            result = model.predict(ImageBatch(images_in), progress=False)
                        else:  # any object with predict(records): arrays already at its input size
                            result = model.predict([ImageRecord(source=np.moveaxis(x.numpy(), 0, -1), label=-1)
                                                    for x in images_in], progress=False)
                        # 0.5 at the image threshold, the typical normal image at 0.05 (DecisionRule.normalized)
                        normalized = model.decision_.normalized(result.scores)
                        for j, k in enumerate(good):
                            index = todo[batch.indices[k]]
                            record = records[index]
                            row: dict[str, Any] = {"image": printable(record.source), "score": float(result.scores[j]),
                                                   "normalized_score": float(normalized[j]),
                                                   "anomalous": bool(result.labels[j]), "threshold": model.threshold_}
                            if drawing and result.maps is not None and (mode == "all" or row["anomalous"]):
                                row["_pending"] = True
                                futures.append(pool.submit(
                                    _write_heatmap, stage.path, f"{index:05d}_{Path(record.name).stem}",
                                    batch.pictures[k], record.source, result.maps[j], low, high,
                                    model.pixel_threshold_ if result.masks is not None else None,
                                    {key: row[key] for key in ("score", "normalized_score", "threshold", "anomalous")}))
                            rows.append(row)
                    pending.append((rows, futures, errors))
                    settle(keep=2)
                    if stop is not None:
                        settle(keep=0)
                        raise DataError(stop)
                settle(keep=0)
            except RuntimeError as exc:  # a dead decoding worker, noticed while the model ran
                from anomalens.data.torch_dataset import worker_death

                death = worker_death(exc)
                if death is None:
                    raise
                raise death from None
            finally:
                for _, futures, _ in pending:
                    for future in futures:
                        future.cancel()
    return stage.rows
