"""The output-folder protocol: how every folder anomalens writes comes to exist, is replaced, or is left.

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

The same rules hold for every kind of output folder — a run (``fit``), a test report, predictions, an
export, the demo — and this module is the only place that removes or renames a user-visible path
(``tests/test_architecture.py`` checks that). Single files are written by ``anomalens.outputs.atomic``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import sys
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from anomalens.errors import AnomalensError
from anomalens.outputs.atomic import is_temporary_name, write_json
from anomalens.outputs.names import (DATASET_OUTPUTS, DEMO_OUTPUTS, EXPORT_OUTPUTS, MARKER_FILE, METRICS_FILE, PREDICTION_OUTPUTS,
                                     PREDICTIONS_JSONL, ERRORS_CSV, RUN_FILES, TEST_OUTPUTS, CONFIG_FILE, MANIFEST_FILE,
                                     SCORES_FILE, PREDICTIONS_CSV)

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


def remove_stage(path: Path) -> None:
    """Delete a staging folder this command created (or a leftover ``is_stage_leftover`` recognised)."""
    shutil.rmtree(path, ignore_errors=True)


def remove_earlier_files(folder: Path, names: Iterable[str], pattern_in: dict[str, str] | None = None) -> None:
    """Remove the files an earlier output of the same writer left in ``folder``: the regular files ``names``
    and, for each ``{subfolder: glob}`` of ``pattern_in``, the matching regular files in that subfolder.
    Folders, symbolic links and every other name are left alone."""
    doomed = [folder / name for name in names]
    for sub, pattern in (pattern_in or {}).items():
        if (folder / sub).is_dir() and not (folder / sub).is_symlink():
            doomed += sorted((folder / sub).glob(pattern))
    for path in doomed:
        if path.is_file() and not path.is_symlink():
            path.unlink()


def remove_entry(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def discard_old(folder: Path, final: Path) -> None:
    """Delete what anomalens wrote in ``folder`` (an old output renamed aside), then the folder.

    Anything else (a file a user put there) is kept: the folder is renamed to a visible
    ``NAME.kept-XXXXXXXX`` next to ``final`` and a line on stderr says so.
    """
    ours = owned_names(folder)
    for name in entries(folder):
        path = folder / name
        if name in ours or (name.startswith(INNER_STAGE_PREFIX) and is_stage_leftover(path)):
            remove_entry(path)
    left = entries(folder)
    if not left:
        folder.rmdir()
        return
    kept = final.with_name(f"{final.name}.kept-{uuid.uuid4().hex[:8]}")
    os.rename(folder, kept)
    print(f"anomalens: warning: {kept}: kept {len(left)} file(s) anomalens did not write ({', '.join(left[:3])})",
          file=sys.stderr)


def clean_leftovers(final: Path) -> None:
    """Under ``final``'s lock: remove the staging folders of interrupted commands; restore or delete old ones."""
    parent, prefix = final.parent, f".{final.name}."
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except OSError:
        return
    partial = [parent / n for n in names if n.startswith(prefix + "partial-")]
    old = sorted((parent / n for n in names if n.startswith(prefix + "old-")), key=lambda p: p.stat().st_mtime)
    for path in partial:
        if is_stage_leftover(path) and not is_resumable(path):  # a stopped predict's results wait for --resume
            remove_stage(path)
    old = [p for p in old if is_stage_leftover(p) or output_kind(p)]
    if old and not os.path.lexists(final):
        os.rename(old.pop(), final)  # its replacement never arrived: the newest complete one comes back
    for path in old:
        discard_old(path, final)
    if final.is_dir() and not final.is_symlink():
        clean_inside(final)


def clean_inside(folder: Path) -> None:
    """Remove inner staging folders and temporary files that interrupted commands left in ``folder``."""
    if output_kind(folder) is None:
        return
    for name in entries(folder):
        path = folder / name
        if name.startswith((INNER_STAGE_PREFIX, ".test-partial-")) and is_stage_leftover(path):
            remove_stage(path)
        elif is_leftover_file(name) and path.is_file() and not path.is_symlink():
            path.unlink()


@contextlib.contextmanager
def folder_lock(final: Path) -> Iterator[None]:
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


def check_target(final: Path) -> Path:
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


def input_paths(inputs: Iterable[Any]) -> list[Path]:
    paths = []
    expanded: list[Any] = []
    for item in inputs:  # a DatasetSource (--layout, --normal / --abnormal ...) stands for its folders
        expanded.extend(getattr(item, "paths", None) or [item])
    for item in expanded:
        if isinstance(item, (str, Path)) and os.path.lexists(item):
            with contextlib.suppress(OSError, RuntimeError):
                paths.append(Path(item).resolve())
    return paths


def check_not_input(final: Path, inputs: Iterable[Any], what: str = "output folder") -> None:
    """Refuse an output folder that is an input of the command, lies inside one or contains one."""
    try:
        target = final.resolve()
    except (OSError, RuntimeError):
        return
    for source in input_paths(inputs):
        if target == source or target in source.parents or source in target.parents:
            relation = "is" if target == source else ("contains" if target in source.parents else "is inside")
            raise AnomalensError(f"{final}: the {what} {relation} an input of this command ({source}); "
                                 "choose another folder")


def make_parents(folder: Path) -> list[Path]:
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
            remove_empty(missing)
            raise AnomalensError(f"{path}: cannot create the output folder here: {exc.strerror}") from None
    return missing


def remove_empty(folders: Sequence[Path]) -> None:
    for path in folders:  # deepest first; a folder something else wrote into stays
        with contextlib.suppress(OSError):
            path.rmdir()


def refuse_existing(final: Path, kind: str, overwrite: bool) -> bool:
    """Check an existing ``final`` before any work; True when it has to be replaced (--overwrite)."""
    if not final.is_dir() or not entries(final):
        return False
    if not overwrite:
        raise AnomalensError(f"{final}: already exists; choose another folder or pass --overwrite")
    found = output_kind(final)
    if found is None:
        raise AnomalensError(f"{final}: is not a folder anomalens wrote (no {MARKER_FILE}); --overwrite replaces only "
                             "anomalens outputs: remove it yourself or choose another folder")
    if found != kind and kind != "output":
        article = "an" if kind[0] in "aeiou" else "a"
        raise AnomalensError(f"{final}: is an anomalens {found} folder, not {article} {kind} folder; --overwrite replaces "
                             "only a folder of the same kind")
    ours = owned_names(final)
    foreign = [n for n in entries(final) if n not in ours and not n.startswith(INNER_STAGE_PREFIX)]
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
    if kind not in KNOWN_NAMES:
        raise ValueError(f"unknown output kind {kind!r}")
    with locked_target(final, inputs) as final:
        refuse_existing(final, kind, overwrite)
        stage = new_stage(final, kind)
        try:
            yield stage
            write_marker(stage, kind, entries(stage))
            commit(stage, final, kind, overwrite)
        except BaseException:
            remove_stage(stage)
            raise


@contextlib.contextmanager
def locked_target(final: Path, inputs: Sequence[Any]) -> Iterator[Path]:
    """The checked ``final`` (never an input), its lock held and the leftovers of interrupted commands
    cleaned; parent folders created here are removed again when the block fails."""
    final = check_target(Path(final))
    check_not_input(final, inputs)
    created = make_parents(final)
    try:
        with folder_lock(final):
            clean_leftovers(final)
            yield check_target(final)
    except BaseException:
        remove_empty(created)
        raise


def new_stage(final: Path, kind: str) -> Path:
    """A new hidden staging folder beside ``final``, marked as ours (so a crash leaves something cleanable)."""
    stage = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        stage.mkdir()
    except OSError as exc:
        raise AnomalensError(f"{final.parent}: cannot write the output folder here: {exc.strerror}") from None
    try:
        write_marker(stage, kind, [])
    except BaseException:
        remove_stage(stage)
        raise
    return stage


def commit(stage: Path, final: Path, kind: str, overwrite: bool) -> None:
    """Put ``stage`` in place of ``final``: one rename, or (--overwrite) old aside → new in → old deleted."""
    replace = overwrite and final.is_dir() and bool(entries(final)) and refuse_existing(check_target(final), kind, True)
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
    discard_old(aside, final)


@contextlib.contextmanager
def staged_update(target: Path, kind: str, inputs: Sequence[Any] = (), last: str | None = None,
                   replaces: Iterable[str] = ()) -> Iterator[Path]:
    """Stage files to add to the folder ``target`` (created as a ``kind`` folder if missing or empty).

    Entries of an existing ``target`` are replaced only when anomalens wrote them; ``replaces`` names
    outputs of the same command that are removed when this one does not write them again.
    """
    target = check_target(Path(target))
    check_not_input(target, inputs)
    if not target.is_dir() or not entries(target):
        with staged_directory(target, kind=kind, inputs=inputs) as stage:
            yield stage
        return
    with folder_lock(target):
        clean_inside(target)
        stage = target / f"{INNER_STAGE_PREFIX}{uuid.uuid4().hex[:8]}"
        try:
            stage.mkdir()
        except OSError as exc:
            raise AnomalensError(f"{target}: cannot write here: {exc.strerror}") from None
        try:
            write_marker(stage, kind, [])
            yield stage
            (stage / MARKER_FILE).unlink()
            move_into(stage, target, kind=kind, last=last, replaces=replaces)
        finally:
            remove_stage(stage)


def move_into(stage: Path, target: Path, kind: str = "report", last: str | None = None,
               replaces: Iterable[str] = ()) -> None:
    """Move every entry of ``stage`` into ``target``, ``last`` at the very end (caller holds the lock).

    An existing entry is replaced only if anomalens wrote it (``target``'s marker); anything else makes
    the whole move fail before a single entry moved. The marker is updated first, so a crash part-way
    leaves every moved entry recorded as anomalens'.
    """
    ours = owned_names(target)
    names = sorted(entries(stage), key=lambda n: n == last)
    clash = [n for n in names if os.path.lexists(target / n) and n not in ours]
    if clash:
        raise AnomalensError(f"{target / clash[0]}: exists and was not written by anomalens; choose another output folder")
    marker = read_marker(target)
    own_kind = marker["kind"] if marker else (output_kind(target) or kind)
    stale = [n for n in set(replaces) & ours if n not in names and os.path.lexists(target / n)]
    write_marker(target, own_kind, ((ours - {MARKER_FILE}) | set(names)) - set(stale))
    for name in stale:
        remove_entry(target / name)
    for name in names:
        entry, dest = stage / name, target / name
        if dest.is_dir() and not dest.is_symlink():
            aside = stage / f".old-{name}"
            os.rename(dest, aside)
            os.rename(entry, dest)
            shutil.rmtree(aside)
        else:
            os.replace(entry, dest)
