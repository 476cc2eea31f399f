"""Printable text for file names that are not valid UTF-8.

On Linux a file name is bytes; Python decodes the bytes that are not UTF-8 to lone surrogates
(``'caf\\udce9.png'`` for Latin-1 ``café.png``), which cannot be written to a UTF-8 CSV, JSON or HTML file
and print as gibberish. Every name the library writes or shows goes through :func:`printable`, which
spells such bytes as ``\\xNN`` (``'caf\\xe9.png'``): readable, one line, and the same for the same file,
so a resumed job still recognises the images it has done. Valid UTF-8 names are returned unchanged.
"""

from __future__ import annotations

import os
from pathlib import PurePath

__all__ = ["printable"]


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
