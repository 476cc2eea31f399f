"""The images ``predict`` scores, decoded chunk by chunk the way the predictor itself decodes them.

- a run (torch): ``anomalens.data.iterate_decoded`` — worker processes, one decode for the model input and
  the heatmap's picture, batches pinned on CUDA;
- an export (ONNX Runtime, OpenVINO): the predictor's own numpy ``load`` in a pool of threads (Pillow's
  decoders and numpy's resize release the GIL), the next chunk decoded while the model runs this one — so
  predicting with an export never imports torch. Heatmap pictures are left to the heatmap writer, which
  reads a flagged image again (bounded: ``anomalens.data.pictures.heatmap_picture``).

Either way a chunk is a ``DecodedBatch``-like object: ``indices`` into the records, ``images`` (N, C, H, W),
``pictures`` (uint8 or None each) and ``errors`` (the one-line reason an image could not be read, else None;
its row of ``images`` is then zeros).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from anomalens.errors import DataError


@dataclass
class LoadedChunk:
    indices: list[int]
    images: np.ndarray
    pictures: list[np.ndarray | None]
    errors: list[str | None]


def _load_one(predictor: Any, record: Any) -> tuple[np.ndarray | None, str | None]:
    try:
        return predictor.load(record), None
    except DataError as exc:
        return None, str(exc)


def _stack(predictor: Any, start: int, loaded: list[tuple[np.ndarray | None, str | None]]) -> LoadedChunk:
    shape = (predictor.image_channels, *predictor.input_size)
    images = np.stack([image if image is not None else np.zeros(shape, np.float32) for image, _ in loaded])
    return LoadedChunk(indices=list(range(start, start + len(loaded))), images=images,
                       pictures=[None] * len(loaded), errors=[error for _, error in loaded])


def loaded_chunks(predictor: Any, records: Sequence[Any], chunk_size: int, threads: int,
                  desc: str | None = None) -> Iterator[LoadedChunk]:
    """``records`` decoded by ``predictor.load`` in ``threads`` threads, ``chunk_size`` at a time, in order; the
    next chunk is decoded while the caller works on this one."""
    from anomalens.progress import progress_bar

    records = list(records)
    starts = list(range(0, len(records), chunk_size))
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="decode") as pool, \
            progress_bar(total=len(records), desc=desc, unit="img", enabled=desc is not None) as bar:

        def submit(start: int) -> list[Future]:
            return [pool.submit(_load_one, predictor, r) for r in records[start : start + chunk_size]]

        ahead = submit(starts[0]) if starts else []
        for position, start in enumerate(starts):
            current = ahead
            ahead = submit(starts[position + 1]) if position + 1 < len(starts) else []
            chunk = _stack(predictor, start, [future.result() for future in current])
            bar.update(len(chunk.indices))
            yield chunk


def decoded_chunks(predictor: Any, records: Sequence[Any], chunk_size: int, pictures: bool,
                   workers: int | None = None, desc: str | None = None) -> Iterator[Any]:
    """The chunks of ``records`` for ``predictor`` (module docstring). ``workers``: decoding processes (torch)
    or threads (exports); None: the machine's default."""
    if predictor.runtime == "torch":
        from anomalens.data import iterate_decoded

        yield from iterate_decoded(records, predictor.input_size, chunk_size, channels=predictor.image_channels,
                                   pictures=pictures, num_workers=workers,
                                   pin_memory=str(predictor.device).startswith("cuda"), desc=desc,
                                   decode=predictor.params.get("decode"))
        return
    from anomalens.cores import available_cores

    threads = workers if workers else max(1, min(8, available_cores()))
    yield from loaded_chunks(predictor, records, chunk_size, threads, desc)


__all__ = ["LoadedChunk", "decoded_chunks", "loaded_chunks"]
