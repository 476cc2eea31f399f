"""Where a command may write: the output path checked (a file, a symbolic link, an input of the command),
its missing parents created (and removed again on failure), and the exclusive lock beside it."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from anomalens.errors import AnomalensError

_HELD_LOCKS: set[int] = set()  # descriptors of the locks this process holds


def _drop_inherited_locks() -> None:
    """In a forked child (a decoding worker, the report's drawing process): close its copies of the lock
    descriptors. A flock belongs to the open file, which a fork shares, so a child that outlived a killed
    command would otherwise keep its folder locked."""
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


@contextlib.contextmanager
def folder_lock(final: Path) -> Iterator[None]:
    """Exclusive lock on the output folder ``final`` (``.NAME.lock`` beside it); fails at once if held.
    Held by this process alone: forked children close their copy (``_drop_inherited_locks``)."""
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
    if fd is not None:
        _HELD_LOCKS.add(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        if fd is not None:
            _HELD_LOCKS.discard(fd)
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
