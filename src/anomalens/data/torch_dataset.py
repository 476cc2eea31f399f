"""PyTorch view of image records: fixed-size float tensors, masks and labels, batched with progress.

Decoding runs in worker processes (a torch ``DataLoader``) so that it overlaps the model and uses the
machine's cores: :func:`default_workers` picks how many from the cores this process may use
(``ANOMALENS_WORKERS`` or :func:`decoding_workers` override it; 0 decodes in this process). Every path that
reads images — fit, test, calibrate, ``Detector.score``/``predict`` and ``anomalens predict`` — goes
through :func:`iterate_batches` or :func:`iterate_decoded`, so all of them use it. Results do not depend
on the number of workers: each image is decoded by the same code, batches keep record order.

A worker that dies (killed, out of memory) ends the loop with :class:`WorkerError` (one line), never a
hang: the ``DataLoader`` watches its workers.

Decoding one image (tiles, large frames, the decode mode): ``anomalens.data.model_input``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from anomalens.cores import available_cores
from anomalens.data.io import (
    describe_source,
    load_mask,
)
from anomalens.data.model_input import (ImageTile, as_hw, current_decode_mode, decode_for_model, decoding_mode,
                                         forget_working_image, resize_image)
from anomalens.data.pictures import display_picture
from anomalens.data.records import ImageRecord
from anomalens.errors import AnomalensError, DataError

__all__ = [
    "DecodedBatch",
    "ImageBatch",
    "ImageTile",
    "TensorImageDataset",
    "WorkerError",
    "current_decode_mode",
    "decode_for_model",
    "decoding_mode",
    "decoding_workers",
    "default_workers",
    "display_picture",
    "iterate_batches",
    "iterate_decoded",
    "resolve_workers",
    "worker_death",
]

#: Pictures larger than this (pixels) are not sent back from a decoding worker for heatmaps: they would
#: fill the prefetch queue with hundreds of MB; their heatmap writer reads the file again instead.
DISPLAY_PIXEL_LIMIT = 4_500_000

_workers_override: int | None = None


class WorkerError(AnomalensError):
    """An image-decoding worker process died (killed, out of memory): reported as one line, never a hang."""


def default_workers() -> int:
    """Decoding worker processes used when a caller does not say: ``ANOMALENS_WORKERS`` if set, else the
    value of an enclosing :func:`decoding_workers`, else ``min(8, cores - 1)`` (the main process runs the
    model, one core is left to it) and at least 1 on a machine with 2 or more cores."""
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
    cores = available_cores()
    return 0 if cores < 2 else min(8, max(1, cores - 1))


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


class TensorImageDataset(Dataset):
    """Records as dicts of tensors, resized to ``image_size``.

    Item ``i`` is ``{"image": float32 (C, H, W) in [0, 1] (bilinear, antialiased),
    "mask": float32 (1, H, W) of 0/1 (nearest; zeros without a mask), "label": int,
    "index": i}``. A mask whose size differs from its image raises DataError naming both.
    """

    def __init__(self, records: Sequence[ImageRecord], image_size: int | tuple[int, int], channels: int = 3,
                 decode: str | None = None) -> None:
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels!r}")
        self.records = list(records)
        self.image_size = as_hw(image_size)
        self.channels = channels
        # Fixed now (not read from the enclosing decoding_mode when an item is decoded): worker processes
        # get the dataset, not this process's context.
        self.decode = current_decode_mode(decode)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        rec = self.records[i]
        image, _, original = decode_for_model(rec.source, self.image_size, self.channels, decode=self.decode)
        h, w = self.image_size
        if rec.mask is None:
            mask = torch.zeros((1, h, w), dtype=torch.float32)
        else:
            m = load_mask(rec.mask)
            if m.shape != original:
                raise DataError(
                    f"{describe_source(rec.mask)}: mask size {m.shape[1]}x{m.shape[0]} (WxH) does not match "
                    f"image {describe_source(rec.source)} size {original[1]}x{original[0]}"
                )
            mask = torch.from_numpy(m.astype(np.float32))[None]
            if mask.shape[1:] != (h, w):
                # "nearest-exact" samples pixel centres (like PIL/skimage); plain "nearest"
                # shifts masks by up to a pixel when downscaling.
                mask = F.interpolate(mask[None], size=(h, w), mode="nearest-exact")[0]
        return {"image": image, "mask": mask, "label": int(rec.label), "index": i}


class ImageBatch:
    """Images already decoded and sized: float32 (N, C, H, W) in [0, 1]. ``Detector.score`` / ``predict``
    take one (``anomalens.data.as_image_inputs`` makes it from a tensor or array batch) and run it without
    any decoding or resizing; it slices like a list, so ``predict_in_chunks`` works on it too."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.ndim != 4:
            raise DataError(f"an image batch must be (N, C, H, W), got shape {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: slice | int) -> "ImageBatch":
        if isinstance(index, slice):
            return ImageBatch(self.images[index])
        return ImageBatch(self.images[index : index + 1])

    def __iter__(self) -> Iterator["ImageBatch"]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"ImageBatch({'x'.join(map(str, self.images.shape))} {self.images.dtype})"


def _batch_from_images(batch: ImageBatch, size: tuple[int, int], channels: int, batch_size: int
                       ) -> Iterator[dict[str, torch.Tensor]]:
    images = batch.images
    if images.shape[1] != channels:
        if channels == 3 and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        else:
            raise DataError(f"images have {images.shape[1]} channels; this detector takes {channels}")
    for start in range(0, len(batch), batch_size):
        chunk = images[start : start + batch_size]
        if tuple(chunk.shape[2:]) != size:
            chunk = torch.stack([resize_image(image.float(), size) for image in chunk])
        n = len(chunk)
        yield {"image": chunk.float().contiguous(), "mask": torch.zeros((n, 1, *size)), "label": torch.full((n,), -1),
               "index": torch.arange(start, start + n)}


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


def _loader(dataset: Dataset, batch_size: int, workers: int, pin_memory: bool, collate: Any = None) -> DataLoader:
    kwargs: dict[str, Any] = {"batch_size": batch_size, "shuffle": False, "num_workers": workers,
                              "pin_memory": pin_memory and torch.cuda.is_available()}
    if collate is not None:
        kwargs["collate_fn"] = collate
    if workers:
        kwargs["prefetch_factor"] = 2
        kwargs["worker_init_fn"] = die_with_parent
    return DataLoader(dataset, **kwargs)


def die_with_parent(_worker_id: int = 0) -> None:
    """In a decoding worker: end when the command that started it ends, even by ``kill -9``.

    A forked worker shares the command's open files, its output-folder lock among them, so a worker that
    outlived a killed command (PyTorch's own check notices the parent only every few seconds) kept
    ``predict --resume`` out with "another command is writing". Linux only (prctl PR_SET_PDEATHSIG);
    elsewhere PyTorch's check remains.
    """
    import ctypes
    import signal

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


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
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield batched dicts (``image`` (B, C, H, W), ``mask`` (B, 1, H, W), ``label`` (B,),
    ``index`` (B,)) in record order, with progress labelled ``desc``.

    Images are decoded by ``num_workers`` processes (None: :func:`resolve_workers` decides; 0: in this
    process); ``pin_memory`` (when CUDA is available) lets the caller copy batches with ``non_blocking=True``.
    ``records`` may be an :class:`ImageBatch` (already decoded: sliced, resized only if needed). ``decode``:
    how files are decoded, "exact" or "fast" (None: :func:`current_decode_mode`).

    ``desc=None`` means no progress (callers pass ``desc if progress else None``). Otherwise it is a bar
    on a terminal and INFO log lines elsewhere (``anomalens.progress``), never when the environment
    variable ``ANOMALENS_NO_PROGRESS=1`` is set.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(records, ImageBatch):
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels!r}")
        yield from _batch_from_images(records, as_hw(image_size), channels, batch_size)
        return
    dataset = TensorImageDataset(records, image_size, channels, decode)
    workers = resolve_workers(num_workers, dataset.records, batch_size)
    loader = _loader(dataset, batch_size, workers, pin_memory)
    with _progress(len(dataset), desc) as bar:
        try:
            for batch in loader:
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
            forget_working_image()


# ----------------------------------------------------------------------- decode once, keep going
@dataclass
class DecodedBatch:
    """One batch of :func:`iterate_decoded`: for each of its records (``indices`` into the list), the model
    input (a row of ``images``), the uint8 picture for its heatmap (``pictures[k]``, None when not asked for,
    when unreadable or — larger than ``DISPLAY_PIXEL_LIMIT`` — left for the writer to read), its original
    (height, width) and, for a file that could not be read, the one-line reason in ``errors[k]`` (its row of
    ``images`` is then zeros)."""

    indices: list[int]
    images: torch.Tensor
    pictures: list[np.ndarray | None]
    sizes: list[tuple[int, int]]
    errors: list[str | None]

    def pin_memory(self) -> "DecodedBatch":  # called by the DataLoader's pinning thread on CUDA
        self.images = self.images.pin_memory()
        return self


class _DecodedImages(Dataset):
    def __init__(self, records: Sequence[ImageRecord], image_size: tuple[int, int], channels: int, pictures: bool,
                 decode: str) -> None:
        self.records, self.image_size, self.channels, self.pictures = records, image_size, channels, pictures
        self.decode = decode

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple:
        try:
            image, picture, size = decode_for_model(self.records[i].source, self.image_size, self.channels,
                                                    self.pictures, self.decode)
        except DataError as exc:
            return i, torch.zeros((self.channels, *self.image_size)), None, (0, 0), str(exc)
        if picture is not None and picture.shape[0] * picture.shape[1] > DISPLAY_PIXEL_LIMIT:
            picture = None
        # A tensor travels through shared memory; a numpy array would be pickled through a pipe.
        if picture is not None and not picture.flags.writeable:
            picture = picture.copy()  # Pillow's pixels are read-only; torch wants its own
        return i, image, None if picture is None else torch.from_numpy(np.ascontiguousarray(picture)), size, None


def _collate_decoded(items: list[tuple]) -> DecodedBatch:
    return DecodedBatch(
        indices=[item[0] for item in items],
        images=torch.stack([item[1] for item in items]),
        pictures=[item[2] for item in items],
        sizes=[item[3] for item in items],
        errors=[item[4] for item in items],
    )


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
    """Decode each record once, in worker processes, in order: :class:`DecodedBatch` es of ``batch_size``.

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
    dataset = _DecodedImages(records, as_hw(image_size), channels, pictures, current_decode_mode(decode))
    workers = resolve_workers(num_workers, records, batch_size)
    loader = _loader(dataset, batch_size, workers, pin_memory, collate=_collate_decoded)
    with _progress(len(records), desc) as bar:
        try:
            for batch in loader:
                batch.pictures = [None if p is None else p.numpy() for p in batch.pictures]
                yield batch
                bar.update(len(batch.indices))
        except RuntimeError as exc:
            death = worker_death(exc)
            if death is None:
                raise
            raise death from None
