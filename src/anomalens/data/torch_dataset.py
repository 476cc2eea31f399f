"""Loops over image records as batches of tensors, decoded in worker processes, in order, with progress.

Decoding runs in worker processes (a torch ``DataLoader``) so that it overlaps the model and uses the
machine's cores: :func:`default_workers` picks how many from the cores this process may use and where the
model runs — none when the model's CPU threads already use every core (``ANOMALENS_WORKERS`` or
:func:`decoding_workers` override it; 0 decodes in this process). Every path that
reads images — fit, test, calibrate, ``Detector.score``/``predict`` and ``anomalens predict`` — goes
through :func:`iterate_batches` or :func:`iterate_decoded`, so all of them use it. Results do not depend
on the number of workers: each image is decoded by the same code, batches keep record order.

A worker that dies (killed, out of memory) ends the loop with :class:`WorkerError` (one line), never a
hang: the ``DataLoader`` watches its workers.

What one item is (the datasets, ``ImageBatch``, ``DecodedBatch``): ``anomalens.data.image_datasets``, whose
names this module also exports; decoding one image (tiles, large frames, the decode mode):
``anomalens.data.model_input``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from anomalens.cores import available_cores
from anomalens.data.image_datasets import DecodedBatch, DecodedImages, ImageBatch, TensorImageDataset
from anomalens.data.model_input import (ImageTile, as_hw, current_decode_mode, decode_for_model, decoding_mode,
                                         forget_working_image)
from anomalens.data.pictures import display_picture
from anomalens.data.records import ImageRecord
from anomalens.errors import AnomalensError, DataError
from anomalens.processes import die_with_parent

__all__ = [
    "DecodedBatch",
    "ImageBatch",
    "ImageTile",
    "TensorImageDataset",
    "WorkerError",
    "current_decode_mode",
    "decode_for_model",
    "decoding_mode",
    "automatic_workers",
    "decoding_workers",
    "default_workers",
    "display_picture",
    "iterate_batches",
    "iterate_decoded",
    "resolve_workers",
    "worker_death",
]

_workers_override: int | None = None


class WorkerError(AnomalensError):
    """An image-decoding worker process died (killed, out of memory): reported as one line, never a hang."""


def default_workers() -> int:
    """Decoding worker processes used when a caller does not say: ``ANOMALENS_WORKERS`` if set, else the
    value of an enclosing :func:`decoding_workers`, else from the cores this process may use and where the
    model runs (:func:`automatic_workers`)."""
    env = os.environ.get("ANOMALENS_WORKERS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            value = -1
        if value < 0:
            raise DataError(f"ANOMALENS_WORKERS must be a whole number >= 0, got {env!r}")
        return value
    if _workers_override is not None:
        return _workers_override
    return automatic_workers(available_cores(), torch.cuda.is_available(), torch.get_num_threads())


def automatic_workers(cores: int, cuda: bool, torch_threads: int) -> int:
    """The automatic number of decoding workers.

    With CUDA the model runs on the GPU and its process needs one core to feed it: ``min(8, cores - 1)``.
    On the CPU the model's own threads (``torch_threads``, by default one per core) already use the cores,
    and a decoding process only takes them away: ``min(8, cores - torch_threads)``, which is 0 (decode in
    this process) unless torch was told to use fewer threads. Measured on 2 cores
    (benchmarks/results/decoding_workers): in-process decoding was 1.07-3.2x faster than one worker for
    DRAEM, PaDiM and PatchCore on 256 px PNG, 1024 px PNG and 2048 px JPEG images.
    """
    if cores < 2:
        return 0
    if cuda:
        return min(8, cores - 1)
    return min(8, max(0, cores - max(1, torch_threads)))


@contextlib.contextmanager
def decoding_workers(workers: int | None) -> Iterator[None]:
    """Within the block, decode with ``workers`` processes by default (None: leave the default as it is)."""
    global _workers_override
    if workers is not None and workers < 0:
        raise DataError(f"workers must be >= 0, got {workers}")
    previous = _workers_override
    if workers is not None:
        _workers_override = workers
    try:
        yield
    finally:
        _workers_override = previous


def resolve_workers(requested: int | None, records: Sequence, batch_size: int) -> int:
    """Worker processes for one loop: ``requested`` (None: :func:`default_workers`), but none for records
    already in memory (nothing to decode) or a loop of one batch (starting a worker costs more than it saves),
    and never more than there are batches."""
    workers = default_workers() if requested is None else int(requested)
    if workers <= 0 or isinstance(records, ImageBatch):
        return 0
    n_batches = -(-len(records) // max(1, batch_size))
    if n_batches < 2 or all(isinstance(r, ImageRecord) and _in_memory(r.source) for r in records):
        return 0
    return min(workers, n_batches)


def _in_memory(source: Any) -> bool:
    """True for an array, or a tile of one: nothing to decode, so no worker process is worth starting."""
    return isinstance(source.image if isinstance(source, ImageTile) else source, np.ndarray)


def _unwrap_worker_error(exc: DataError) -> DataError:
    """DataLoader workers re-raise with a multi-line traceback; keep the original one-line message."""
    text = str(exc)
    if "DataLoader worker" not in text:
        return exc
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    _, sep, message = last.partition("DataError: ")
    return DataError(message if sep else last)


def worker_death(exc: BaseException) -> WorkerError | None:
    """The one-line error for a DataLoader worker that died, or None for any other error. (The DataLoader's
    SIGCHLD handler raises it wherever the main thread is — often inside the model, not the loader loop —
    so callers around whole loops convert it too.)"""
    if not isinstance(exc, RuntimeError):
        return None
    text = " ".join(str(exc).split())
    if "DataLoader worker" not in text:
        return None
    return WorkerError(f"an image-decoding worker process died ({text.rstrip('.')}); the machine may be out of "
                       "memory — rerun with fewer workers (--workers N, 0 decodes in the main process)")


def _loader(dataset: Dataset, batch_size: int, workers: int, pin_memory: bool, collate: Any = None,
            breaks: Sequence[int] = ()) -> DataLoader:
    kwargs: dict[str, Any] = {"num_workers": workers, "pin_memory": pin_memory and torch.cuda.is_available()}
    if breaks:  # batches of batch_size within each segment: a part's batches as a loop of its own makes them
        edges = sorted({0, *(b for b in breaks if 0 < b < len(dataset)), len(dataset)})
        kwargs["batch_sampler"] = [list(range(i, min(i + batch_size, stop)))
                                   for start, stop in zip(edges, edges[1:]) for i in range(start, stop, batch_size)]
    else:
        kwargs.update(batch_size=batch_size, shuffle=False)
    if collate is not None:
        kwargs["collate_fn"] = collate
    if workers:
        kwargs["prefetch_factor"] = 2
        kwargs["worker_init_fn"] = die_with_parent
    return DataLoader(dataset, **kwargs)


def stop_workers(batches: Iterator) -> None:
    """Stop a loader's decoding workers now. An error raised inside the loader keeps its iterator alive
    through the traceback's frames, and its workers were then only shut down at some later garbage
    collection, with a 5 s join timeout per worker (measured: 10.4 s for 2 workers, in the next call)."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's multi-process iterator only
    if shutdown is not None:
        shutdown()


def _progress(total: int, desc: str | None):
    """A bar on a terminal, INFO log lines elsewhere (``anomalens.progress``); none without ``desc``."""
    from anomalens.progress import progress_bar

    quiet = desc is None or os.environ.get("ANOMALENS_NO_PROGRESS", "") not in ("", "0")
    return progress_bar(total=total, desc=desc, unit="img", enabled=not quiet)


def iterate_batches(
    records: Sequence[ImageRecord] | ImageBatch,
    image_size: int | tuple[int, int],
    batch_size: int,
    channels: int = 3,
    desc: str | None = None,
    num_workers: int | None = None,
    pin_memory: bool = False,
    decode: str | None = None,
    breaks: Sequence[int] = (),
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield batched dicts (``image`` (B, C, H, W), ``mask`` (B, 1, H, W), ``label`` (B,),
    ``index`` (B,)) in record order, with progress labelled ``desc``.

    Images are decoded by ``num_workers`` processes (None: :func:`resolve_workers` decides; 0: in this
    process); ``pin_memory`` (when CUDA is available) lets the caller copy batches with ``non_blocking=True``.
    ``records`` may be an :class:`ImageBatch` (already decoded: sliced, resized only if needed). ``decode``:
    how files are decoded, "exact" or "fast" (None: :func:`current_decode_mode`). ``breaks``: indices where
    a batch must start, so that one loop (one set of decoding workers) over several parts of ``records``
    yields the batches that one loop per part would.

    ``desc=None`` means no progress (callers pass ``desc if progress else None``). Otherwise it is a bar
    on a terminal and INFO log lines elsewhere (``anomalens.progress``), never when the environment
    variable ``ANOMALENS_NO_PROGRESS=1`` is set.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(records, ImageBatch):
        if breaks:
            raise DataError("breaks are for records to decode, not an ImageBatch")
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels!r}")
        yield from records.batch_dicts(as_hw(image_size), channels, batch_size)
        return
    dataset = TensorImageDataset(records, image_size, channels, decode)
    workers = resolve_workers(num_workers, dataset.records, batch_size)
    batches = iter(_loader(dataset, batch_size, workers, pin_memory, breaks=breaks))
    with _progress(len(dataset), desc) as bar:
        try:
            for batch in batches:
                yield batch
                bar.update(len(batch["label"]))
        except DataError as exc:
            raise _unwrap_worker_error(exc) from None
        except RuntimeError as exc:
            death = worker_death(exc)
            if death is None:
                raise
            raise death from None
        finally:
            stop_workers(batches)
            forget_working_image()


def iterate_decoded(
    records: Sequence[ImageRecord],
    image_size: int | tuple[int, int],
    batch_size: int,
    channels: int = 3,
    pictures: bool = False,
    num_workers: int | None = None,
    pin_memory: bool = False,
    desc: str | None = None,
    decode: str | None = None,
) -> Iterator[DecodedBatch]:
    """Decode each record once, in worker processes, in order: ``DecodedBatch`` es of ``batch_size``.

    Unlike :func:`iterate_batches`, an unreadable file does not stop the loop: its reason is in the batch
    (``errors``), so the caller decides — stop after the images before it, or record it and go on.
    ``pictures``: also return the uint8 picture of each image (for heatmap overlays), from the same decode.
    ``decode``: "exact" or "fast" (None: :func:`current_decode_mode`).
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    records = list(records)
    dataset = DecodedImages(records, as_hw(image_size), channels, pictures, current_decode_mode(decode))
    workers = resolve_workers(num_workers, records, batch_size)
    batches = iter(_loader(dataset, batch_size, workers, pin_memory, collate=DecodedImages.collate))
    with _progress(len(records), desc) as bar:
        try:
            for batch in batches:
                batch.pictures = [None if p is None else p.numpy() for p in batch.pictures]
                yield batch
                bar.update(len(batch.indices))
        except RuntimeError as exc:
            death = worker_death(exc)
            if death is None:
                raise
            raise death from None
        finally:
            stop_workers(batches)
