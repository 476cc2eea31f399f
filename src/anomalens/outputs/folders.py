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
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from anomalens.errors import AnomalensError, Terminated
from anomalens.outputs.marker import (INNER_STAGE_PREFIX, KNOWN_NAMES, MARKER_FILE, entries, is_leftover_file,
                                      is_resumable, is_stage_leftover, output_kind, owned_names, read_marker,
                                      write_marker)
from anomalens.outputs.targets import check_not_input, check_target, folder_lock, make_parents, remove_empty


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


_stop_requested = False


def request_stop() -> None:
    """From now on no staged output of this process is committed (``anomalens`` calls it on SIGTERM).

    The SIGTERM handler also raises :class:`Terminated` where the main thread is, but an exception raised while
    Python runs a finaliser (``__del__``, a weakref callback) is printed and dropped, and the command would go
    on to commit its result after all: a stop request is honoured here too, at the last step before a commit."""
    global _stop_requested
    _stop_requested = True


def refuse_after_stop() -> None:
    """Raise :class:`Terminated` when a stop was requested: the last step of every staged output before its commit."""
    if _stop_requested:
        raise Terminated()


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
            refuse_after_stop()
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
            refuse_after_stop()
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
