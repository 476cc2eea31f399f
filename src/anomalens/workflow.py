"""The fit → calibrate → test → predict workflow, shared by the CLI and the Python API.

Output-folder protocol
----------------------
Every command that writes files follows the same rules, so that no run can lose a file it did not
create and a crash never leaves a half-written folder that looks complete:

1. **Marker.** Every folder anomalens writes holds ``.anomalens-output.json``: the kind of folder
   (``run``, ``predictions``, ``report``, ``demo``) and the top-level names anomalens wrote into it.
   Folders written before the marker existed are recognised by their files (``detector.json`` for a
   run, ``predictions.csv`` for predictions, ``metrics.json`` for a report).
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

File-system errors (permission denied, read-only or full file system, ``-o`` naming a file or a broken
symbolic link) surface as ``OSError`` or ``AnomalensError`` naming the path; the CLI prints them as one
line, exit status 2. Checks that can run before the expensive work (the lock, the staging folder, the
target's state) do.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import math
import os
import shutil
import stat
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from anomalens.data import AnomalyDataset, ImageRecord, TensorImageDataset, list_images, load_dataset, load_image
from anomalens.catalog import create_detector, load_detector
from anomalens.detector import Detector
from anomalens.errors import AnomalensError, DataError
from anomalens.metrics import evaluate

RUN_INFO_FILE = "run.json"
MARKER_FILE = ".anomalens-output.json"
INNER_STAGE_PREFIX = ".anomalens-partial-"
TEST_OUTPUTS = frozenset({"metrics.json", "scores.csv", "report.html", "roc.png", "score_histogram.png", "loss_curves.png", "cases"})
_RUN_FILES = frozenset({"detector.json", "weights.safetensors", RUN_INFO_FILE, "calibration.json"})
_TMP_FILES = frozenset(name + ".tmp" for name in (*_RUN_FILES, "metrics.json"))
# What each kind of folder holds, for folders written before the marker existed (and their signature).
_KNOWN_NAMES = {
    "run": _RUN_FILES | TEST_OUTPUTS | _TMP_FILES,
    "predictions": frozenset({"predictions.csv", "predictions.jsonl", "heatmaps", "masks"}),
    "report": TEST_OUTPUTS,
    "demo": frozenset({"data", "runs", "index.html"}),
    "output": frozenset(),  # a folder of unnamed kind (staged_directory without kind): its marker lists its files
}
_SIGNATURE = {"run": {"detector.json"}, "predictions": {"predictions.csv"}, "report": {"metrics.json"},
              "demo": {"index.html", "runs"}}
_ALL_KNOWN = frozenset().union(*_KNOWN_NAMES.values()) | {MARKER_FILE, MARKER_FILE + ".tmp"}


# ------------------------------------------------------------------------------- file handling
def _jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars as Python numbers, non-finite floats as None (null), paths as text."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _dumps(data: Any, indent: int | None = None) -> str:
    return json.dumps(_jsonable(data), indent=indent, allow_nan=False)


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
        names = set(os.listdir(folder))
    except OSError:
        return None
    return next((kind for kind, sign in _SIGNATURE.items() if sign <= names), None)


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
        if _is_stage_leftover(path):
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
    for item in inputs:
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
    final = _check_target(Path(final))
    _check_not_input(final, inputs)
    created = _make_parents(final)
    try:
        with _folder_lock(final):
            _clean_leftovers(final)
            final = _check_target(final)
            _refuse_existing(final, kind, overwrite)
            stage = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
            try:
                stage.mkdir()
            except OSError as exc:
                raise AnomalensError(f"{final.parent}: cannot write the output folder here: {exc.strerror}") from None
            try:
                _write_marker(stage, kind, [])
                yield stage
                _write_marker(stage, kind, _entries(stage))
                _commit(stage, final, kind, overwrite)
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
    except BaseException:
        _remove_empty(created)
        raise


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
) -> Detector:
    """Fit ``model`` on the normal training images of ``data`` and save it to ``run_dir``.

    The run folder is checked (and locked) before the data is read; ``overwrite`` replaces only an
    existing anomalens run, never ``data`` itself (see the module docstring).
    """
    detector = create_detector(model, **(params or {}))
    run_dir = Path(run_dir)
    with staged_directory(run_dir, overwrite=overwrite, kind="run", inputs=[data]) as stage:
        dataset = _as_dataset(data)
        if not dataset.train:
            raise DataError(f"{getattr(data, 'name', data)}: no training images")
        start = time.perf_counter()
        detector.fit(dataset.train, progress=progress)
        seconds = time.perf_counter() - start
        detector.save(stage)
        _write_json(stage / RUN_INFO_FILE, {
            "detector": model,
            "data": str(data) if not isinstance(data, AnomalyDataset) else data.name,
            "n_train_images": len(dataset.train),
            "fit_seconds": round(seconds, 3),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "threshold": detector.threshold_,
            "threshold_source": detector.decision_.description,
        })
    return detector


# ------------------------------------------------------------------------------------- helpers
def ground_truth_masks(records: Sequence[ImageRecord], size: tuple[int, int]) -> np.ndarray:
    """Ground-truth masks resized (nearest) to the detector's input size; all False for normals."""
    dataset = TensorImageDataset(records, size)
    return np.stack([dataset[i]["mask"][0].numpy() > 0.5 for i in range(len(records))])


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
    from anomalens.report import write_test_report

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
    masks = ground_truth_masks(records, size) if dataset.has_masks else None
    with _staged_update(out_dir, kind="report", inputs=[data], last="metrics.json", replaces=TEST_OUTPUTS) as stage:
        start = time.perf_counter()
        result = detector.predict(records, progress=progress)
        seconds = time.perf_counter() - start
        pixel_maps = result.maps if masks is not None else None
        metrics = evaluate(labels, result.scores, detector.threshold_, masks=masks, maps=pixel_maps, predicted=result.labels)
        metrics.update({
            "detector": detector.name,
            "n_images": len(records),
            "n_anomalous": int(labels.sum()),
            "threshold_source": detector.decision_.description,
            "pixel_threshold": detector.pixel_threshold_,
            "min_area": detector.decision_.min_area,
            "test_seconds": round(seconds, 3),
            "images_per_second": round(len(records) / seconds, 2) if seconds > 0 else None,
        })
        undefined = undefined_metrics(metrics)
        if undefined:
            metrics["undefined"] = undefined
        if report:
            write_test_report(
                stage,
                names=[r.name for r in records],
                defect_types=[r.defect_type for r in records],
                labels=labels,
                scores=result.scores,
                threshold=detector.threshold_,
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
        records = dataset.test or dataset.train
        normals = detector.holdout_split(dataset.train)[1] if dataset.train and dataset.test else ()
        info = detector.calibrate(records, method=method, normal_records=normals, clear_border=clear_border, progress=progress)
        info.update({"method": method, "n_images": len(records), "n_anomalous": int(sum(r.label for r in records))})
        try:
            detector.save_decision(run_dir)
            _write_json(run_dir / "calibration.json", info)
            if _read_marker(run_dir) is not None:
                _write_marker(run_dir, _read_marker(run_dir)["kind"], _ours(run_dir) | {"calibration.json"})
        finally:
            _clean_inside(run_dir)  # a temporary file a failed write left (full disk)
    return info


# ------------------------------------------------------------------------------------- predict
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
    return [ImageRecord(source=p, label=-1, name=p.name) for p in paths]


def predict_images(
    run_dir: str | Path,
    images: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    device: str | None = None,
    overwrite: bool = False,
    heatmaps: bool = True,
    chunk_size: int = 64,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Score new images; write predictions.csv / .jsonl and, per image, a heatmap overlay and a mask.

    Heatmaps are at the image's own resolution, on one fixed colour scale for the whole run: from the
    typical value on normal images (blue) to twice the distance up to the pixel threshold (red), so the
    threshold sits mid-scale and colours mean the same thing in every picture.
    """
    from PIL import Image

    from anomalens.report import draw_mask_contours, overlay_heatmap

    inputs = [run_dir, *([images] if isinstance(images, (str, Path)) else images)]
    rows: list[dict[str, Any]] = []
    with staged_directory(Path(out_dir), overwrite=overwrite, kind="predictions", inputs=inputs) as stage:
        detector = load_detector(run_dir, device=device)
        records = _predict_records(images)
        for record in records:  # fail before any work on an unreadable file
            load_image(record.source)
        if heatmaps and detector.localizes:
            (stage / "heatmaps").mkdir()
            (stage / "masks").mkdir()
        reference = detector.decision_.map_reference
        low = reference if reference is not None else 0.0
        high = 2 * (detector.pixel_threshold_ or 1.0) - low
        for start, result in detector.predict_in_chunks(records, chunk_size, progress=progress):
            for i, record in enumerate(records[start : start + chunk_size]):
                row = {
                    "image": str(record.source),
                    "score": float(result.scores[i]),
                    "anomalous": bool(result.labels[i]),
                    "threshold": detector.threshold_,
                }
                if heatmaps and result.maps is not None:
                    image = load_image(record.source)
                    amap = np.asarray(Image.fromarray(result.maps[i]).resize(image.shape[1::-1], Image.BILINEAR))
                    overlay = overlay_heatmap(image, amap, low, high)
                    stem = f"{start + i:05d}_{Path(record.name).stem}"
                    if result.masks is not None:
                        mask = amap > detector.pixel_threshold_
                        overlay = draw_mask_contours(overlay, mask, (255, 255, 255))
                        Image.fromarray((mask * 255).astype(np.uint8)).save(stage / "masks" / f"{stem}_mask.png")
                        row["defect_area_fraction"] = float(mask.mean())
                        row["mask"] = f"masks/{stem}_mask.png"
                    Image.fromarray(overlay).save(stage / "heatmaps" / f"{stem}.png")
                    row["heatmap"] = f"heatmaps/{stem}.png"
                rows.append(row)
        fields = ["image", "score", "anomalous", "threshold", "defect_area_fraction", "heatmap", "mask"]
        with open(stage / "predictions.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        with open(stage / "predictions.jsonl", "w") as fh:
            fh.writelines(_dumps(row) + "\n" for row in rows)
    return rows
