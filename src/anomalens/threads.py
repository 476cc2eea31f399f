"""Running a stretch of small tensor operations on one CPU thread.

A long chain of small operations — the greedy coreset's steps, the maps' batched upsampling + blur products, a
backbone's BatchNorm fold on a 64 px example, PaDiM's per-position whiteners — spends more on OpenMP / MKL fork
and join than it gains from a second thread, and on a loaded machine each join waits for a descheduled thread.
Measured with 2 threads against 1 on a loaded 2-core machine (load 4-7): coreset 4×, maps 100× (0.8 s against
0.01 s for 32 maps of 256 px), the BatchNorm fold 30×; the whiteners of 256 positions of d = 100 40× (2.08
against 0.054 s, beside one other job). Matrix products (BLAS), reductions along a dimension and elementwise
operations give the same bits with 1 and 2 threads over the shapes these detectors use. LAPACK (Cholesky,
triangular solves) does not: its results change in the last bits with the thread count, so one thread there
also makes PaDiM's whiteners the same on every machine, whatever its cores. Not used where a quiet machine's
second core pays (PatchCore's out-of-fold distance pass: 7× faster on one thread when loaded, 10 % slower when
quiet); the backbone's convolutions keep every thread.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch


_lock = threading.Lock()
_depth = 0  # blocks open, in every thread of the process: the setting is the process's
_saved = 1


@contextlib.contextmanager
def single_thread(device: torch.device | str = "cpu") -> Iterator[None]:
    """Torch's intra-op threads set to 1 inside the block on a CPU ``device`` (restored after); else nothing.

    Blocks may nest and may run at once in several threads (a service's scoring thread beside a user's): the
    count is set to 1 by the first block to open and restored by the last to close, never left at 1."""
    global _depth, _saved
    if torch.device(device).type != "cpu":
        yield
        return
    with _lock:
        if _depth == 0:
            _saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                torch.set_num_threads(_saved)
