"""Progress bars for every long loop (tqdm), switched off with ``progress=False`` or ``-q``."""

from __future__ import annotations

from typing import Iterable


def iterate_progress(iterable: Iterable, progress: bool, desc: str, total: int | None = None) -> Iterable:
    """Wrap ``iterable`` in a tqdm bar when ``progress`` is true."""
    if not progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
