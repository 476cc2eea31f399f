"""Child processes that end with the command that started them — torch-free, standard library only."""

from __future__ import annotations

import os
import signal

__all__ = ["die_with_parent"]


def die_with_parent(_worker_id: int = 0, *, parent: int | None = None) -> None:
    """In a child process: end when the parent ends, even by ``kill -9`` (Linux: prctl PR_SET_PDEATHSIG).

    A decoding worker shares the command's open files, its output-folder lock among them, so a worker that
    outlived a killed command (PyTorch's own check notices the parent only every few seconds) kept
    ``predict --resume`` out with "another command is writing"; a tune's trial ran on to its end, minutes of
    CPU, beside the resumed tune. ``parent``: the pid the caller knows its parent by (else the current parent),
    so that a parent that ended before the request took effect is noticed too. Usable as a DataLoader
    ``worker_init_fn``. Elsewhere than Linux it does nothing.
    """
    import ctypes

    expected = os.getppid() if parent is None else parent
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != expected:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)
