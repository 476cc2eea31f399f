"""Printable text for file names that are not valid UTF-8.

On Linux a file name is bytes; Python decodes the bytes that are not UTF-8 to lone surrogates
(``'caf\\udce9.png'`` for Latin-1 ``café.png``), which cannot be written to a UTF-8 CSV, JSON or HTML file
and print as gibberish. Every name the library writes or shows goes through :func:`printable`, which
spells such bytes as ``\\xNN`` (``'caf\\xe9.png'``): readable, one line, and the same for the same file,
so a resumed job still recognises the images it has done. Valid UTF-8 names are returned unchanged.

:func:`printable` is idempotent (it is applied again wherever text is written), so it cannot tell the
Latin-1 file ``caf<E9>.png`` from a file literally named ``caf\\xe9.png``. Where an input file becomes the
name of a result row — once, at the source — :func:`file_label` spells it so that no two files share a
label: a name with a backslash has it doubled before undecodable bytes become ``\\xNN`` (the convention
of Python's own escapes). Names without a backslash, which is every name in practice, are spelt as by
:func:`printable`.
"""

from __future__ import annotations

import os
from pathlib import PurePath

__all__ = ["file_label", "printable"]


def printable(name: str | bytes | PurePath) -> str:
    """``name`` as text safe to write as UTF-8: undecodable bytes of a file name become ``\\xNN``."""
    text = os.fsdecode(name) if isinstance(name, (bytes, PurePath)) else str(name)
    try:
        text.encode("utf-8")
        return text  # the common case: valid UTF-8, unchanged
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", errors="surrogateescape")  # the file name's own bytes
    except UnicodeEncodeError:  # a surrogate that came from elsewhere than a file name
        return text.encode("utf-8", errors="backslashreplace").decode("ascii")
    return raw.decode("utf-8", errors="backslashreplace")


def file_label(name: str | bytes | PurePath) -> str:
    """The row name of an input file: :func:`printable`, and distinct for distinct names (see the module).

    Apply it once, where a file becomes a row; the label is valid UTF-8, so :func:`printable` leaves it as is.
    """
    text = os.fsdecode(name) if isinstance(name, (bytes, PurePath)) else str(name)
    return printable(text.replace("\\", "\\\\") if "\\" in text else text)
