"""Progress of long loops: a tqdm bar on a terminal, log lines everywhere else.

A fit in CI, Docker or under systemd has no terminal: a bar would print nothing useful (or garbage), so
there the same progress goes to the standard ``logging`` logger ``"anomalens"`` at INFO — the stage, the
count every tenth of the way (at most every ``LOG_EVERY_SECONDS``), the rate and the time taken — and
:func:`stage` logs when each stage of a command starts and ends. ``progress=False`` (``-q``) switches both
off; the CLI's ``--log-level`` chooses what is shown (``anomalens.cli``), a Python program configures
``logging`` as usual (nothing is printed unless it does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

logger = logging.getLogger("anomalens")

#: The longest a logged loop stays silent while it advances.
LOG_EVERY_SECONDS = 30.0


def on_terminal() -> bool:
    """True when stderr is an interactive terminal (where bars belong)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _bars_disabled() -> bool:
    return os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")


class LoggedProgress:
    """The part of tqdm's interface the library uses (``update``, ``close``, iteration, context manager),
    as INFO log lines: one every tenth of ``total`` (or every ``LOG_EVERY_SECONDS``) and one at the end."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str | None = None,
                 unit: str = "it") -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc or "progress", unit
        self.n = 0
        self.start = self.last_time = time.perf_counter()
        self.last_logged = 0
        self.step = max(1, (total or 0) // 10)
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if self.n - self.last_logged >= self.step or now - self.last_time >= LOG_EVERY_SECONDS:
            if self.total is None or self.n < self.total:
                self._log(now)

    def _log(self, now: float) -> None:
        seconds = now - self.start
        rate = f", {self.n / seconds:.1f} {self.unit}/s" if seconds > 0 else ""
        count = f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f} %)" if self.total else f"{self.n} {self.unit}"
        logger.info("%s: %s%s", self.desc, count, rate)
        self.last_logged, self.last_time = self.n, now

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        seconds = time.perf_counter() - self.start
        if self.n:
            rate = f", {self.n / seconds:.1f} {self.unit}/s" if seconds > 0 else ""
            logger.info("%s: %d %s in %.1f s%s", self.desc, self.n, self.unit, seconds, rate)

    def __iter__(self) -> Iterator:
        # ``is None``, never truth: the iterable may be a numpy array (the area search's threshold grid),
        # whose truth value is an error, or a generator, which is always true.
        try:
            for item in (self.iterable if self.iterable is not None else ()):
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LoggedProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Silent(LoggedProgress):
    def _log(self, now: float) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def progress_bar(total: int | None = None, desc: str | None = None, unit: str = "it",
                 iterable: Iterable | None = None, enabled: bool = True) -> Any:
    """A tqdm bar on a terminal, a :class:`LoggedProgress` elsewhere, nothing when not ``enabled`` (or
    ``TQDM_DISABLE=1`` on a terminal, or when INFO is not logged off one)."""
    if not enabled or desc is None:
        return _Silent(iterable, total, desc, unit)
    if on_terminal():
        if _bars_disabled():
            return _Silent(iterable, total, desc, unit)
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
    if not logger.isEnabledFor(logging.INFO):
        return _Silent(iterable, total, desc, unit)
    return LoggedProgress(iterable, total, desc, unit)


def iterate_progress(iterable: Iterable, progress: bool, desc: str, total: int | None = None) -> Iterable:
    """``iterable`` with progress shown (a bar on a terminal, log lines elsewhere) when ``progress`` is true."""
    if not progress:
        return iterable
    return progress_bar(total=total, desc=desc, iterable=iterable)


@contextlib.contextmanager
def stage(what: str, enabled: bool = True) -> Iterator[None]:
    """Log ``what`` when it starts and when it ends (with the seconds taken), at INFO."""
    if not enabled:
        yield
        return
    logger.info("%s: started", what)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        logger.info("%s: stopped after %.1f s", what, time.perf_counter() - start)
        raise
    logger.info("%s: done in %.1f s", what, time.perf_counter() - start)
