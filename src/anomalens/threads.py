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

``map_on_threads`` gets the second core back for such stretches when they split into independent chunks
(PaDiM's whiteners, position chunk by position chunk): each chunk runs on one thread, the chunks on as many
Python threads as torch had intra-op threads — the per-chunk results are those of one thread, so the bits do not
change, and the 1,024 whiteners of a 256 px fit took 1.00 s in one thread and 0.52 s in two (quiet machine).
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import torch


T = TypeVar("T")
R = TypeVar("R")

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


def map_on_threads(function: Callable[[T], R], items: Iterable[T], device: torch.device | str = "cpu") -> list[R]:
    """``[function(item) for item in items]``, each call on one CPU thread (``single_thread``), the calls spread
    over as many Python threads as torch has intra-op threads (torch releases the GIL inside its operations).

    For independent chunks of small operations that write disjoint outputs; on another device, or inside a
    ``single_thread`` block (one thread already), the calls run in order here."""
    items = list(items)
    workers = min(torch.get_num_threads(), len(items))
    if torch.device(device).type != "cpu" or workers <= 1:
        with single_thread(device):
            return [function(item) for item in items]

    # autograd's modes are per thread: the workers run in the caller's
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def one(item: T) -> R:
        with single_thread(device), torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return function(item)

    with single_thread(device), ThreadPoolExecutor(workers, thread_name_prefix="anomalens-chunk") as pool:
        # the block opened first so the count cannot bounce back to all threads between two chunks
        return list(pool.map(one, items))
