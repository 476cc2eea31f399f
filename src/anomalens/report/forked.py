"""A call run in a forked process while the caller goes on: how the report draws its case figures and its
curves on the other cores while ``anomalens test`` computes the metrics."""

from __future__ import annotations

import os
from collections.abc import Callable

from anomalens.cores import available_cores
from anomalens.processes import die_with_parent

__all__ = ["ForkedCall"]


class ForkedCall:
    """``fn(*args)`` run in a forked process while the caller goes on; ``result()`` waits for its return value
    (or raises its exception). The process inherits ``args`` as they are in memory (nothing is pickled on the
    way in, the maps may be hundreds of MB); only the return value comes back through a pipe. Runs it in
    place, at ``result()``, where forking pays nothing (one core) or cannot be had (no fork on this
    platform, no process left, the process died). Leaving the ``with`` block waits for the process, so
    nothing it writes lands after the caller has moved on."""

    def __init__(self, fn: Callable[..., object], *args: object) -> None:
        self._fn, self._args = fn, args
        self._process = self._receiver = None
        if available_cores() < 2:
            return
        import multiprocessing

        sender = None
        try:
            context = multiprocessing.get_context("fork")
            self._receiver, sender = context.Pipe(duplex=False)
            self._process = context.Process(target=_run_and_send, args=(sender, os.getpid(), fn, args), daemon=True)
            self._process.start()
        except (ValueError, OSError, AssertionError):  # no fork here, no process to be had, or this process
            self.close()  # is a daemon (which multiprocessing lets have no children): run it in place
        finally:
            if sender is not None:
                sender.close()  # the child holds its own end: EOF here when it is gone

    def result(self):
        if self._process is None:
            return self._fn(*self._args)
        try:
            ok, value = self._receiver.recv()
        except (EOFError, OSError):  # the process died (memory, a signal) without an answer: do the work here
            self.close()
            return self._fn(*self._args)
        self.close()
        if not ok:
            raise value
        return value

    def close(self) -> None:
        if self._process is not None and self._process.pid is not None:
            self._process.join()
        if self._receiver is not None:
            self._receiver.close()
        self._process = self._receiver = None

    def __enter__(self) -> "ForkedCall":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run_and_send(sender, parent: int, fn: Callable[..., object], args: tuple) -> None:
    """The forked process of :class:`ForkedCall`: (True, return value) or (False, exception) into ``sender``.
    It ends with ``parent`` (a daemon process is ended at a normal exit only): after a ``kill -9`` of the command it
    held the output folder's lock and went on drawing into a staging folder no one would commit."""
    die_with_parent(parent=parent)
    try:
        answer = (True, fn(*args))
    except Exception as exc:  # handed to the parent, which raises it
        answer = (False, exc)
    try:
        sender.send(answer)
    except Exception as exc:  # an exception that cannot be pickled: its text
        sender.send((False, RuntimeError(f"{type(exc).__name__}: {exc}")))
    finally:
        sender.close()
