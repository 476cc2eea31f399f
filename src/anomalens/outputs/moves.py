"""Moving a user's file into a sub-folder, never over another file: how ``anomalens watch
--move-to-verdict-folders`` files a scored hot-folder image under ``ok/`` or ``defect/``.

The one rename of a user's own file in anomalens, so it lives here with the other removals and renames
(``anomalens.outputs``). A file is never overwritten: when the name is taken in the target folder the moved
file gets ``NAME-1.EXT``, ``NAME-2.EXT``, … The move is a hard link under the new name (which fails, rather
than replaces, when the name is taken: two watchers never lose a file to a race) followed by the removal of
the old name; on a file system without hard links it falls back to a rename of a name checked to be free.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

#: Numbered names tried before giving up (a folder with this many copies of one name is a misconfiguration).
MAX_NUMBERED_NAMES = 10_000


def _candidates(name: str):
    path = Path(name)
    yield name
    for number in range(1, MAX_NUMBERED_NAMES):
        yield f"{path.stem}-{number}{path.suffix}"


def move_into_folder(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path:
    """Move the file ``path`` into ``folder`` (created if missing) under its own name, or the first free
    ``NAME-N.EXT``; returns where it went. OSError (the path named) when it cannot be moved; nothing is
    overwritten and the file is never lost (it stays where it was when the move fails)."""
    source, folder = Path(path), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in _candidates(source.name):
        target = folder / name
        try:
            os.link(source, target)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            if target.exists():  # no hard links here: a rename of a free name (a race window, no loss)
                continue
            os.rename(source, target)
            return target
        os.unlink(source)
        return target
    raise FileExistsError(errno.EEXIST, f"no free name in {folder} after {MAX_NUMBERED_NAMES} tries", str(source))


__all__ = ["MAX_NUMBERED_NAMES", "move_into_folder"]
