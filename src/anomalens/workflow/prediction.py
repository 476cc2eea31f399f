"""``predict``: score new images with a run or an export; stream rows, heatmaps and masks into a folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from anomalens.data import ImageRecord, collect_images, input_roots
from anomalens.errors import DataError
from anomalens.inference.decoded import decoded_chunks
from anomalens.inference.loading import load_predictor
from anomalens.inference.rows import predict, result_row
from anomalens.names import file_label
from anomalens.outputs.names import HEATMAPS_DIR, MASKS_DIR
from anomalens.outputs.predictions import heatmap_mode, job_identity, prediction_stage, still_to_do, write_heatmap

logger = logging.getLogger("anomalens")


def prediction_records(images: str | Path | Sequence[str | Path]) -> list[ImageRecord]:
    """The images ``predict`` scores, in its order (``anomalens.data.collect_images``: files as given, folders
    searched into their sub-folders, glob patterns; DataError naming a missing path or a folder without
    images). Shared with ``anomalens.distributed``."""
    return collect_images(images)


def default_writers() -> int:
    """Heatmap writer threads: the cores left by the model (at least 1); PNG encoding and the numpy work
    of the overlays release the GIL."""
    from anomalens.cores import available_cores

    return max(1, min(8, available_cores() - 1))


def predict_images(
    run_dir: str | Path,
    images: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    device: str | None = None,
    overwrite: bool = False,
    heatmaps: str | bool = "anomalous",
    chunk_size: int = 64,
    progress: bool = True,
    resume: bool = False,
    skip_bad: bool = False,
    workers: int | None = None,
    writers: int | None = None,
    runtime: str | None = None,
) -> list[dict[str, Any]]:
    """Score new images; stream predictions.csv / .jsonl and heatmap overlays + masks into ``out_dir``.

    Each image is read and decoded once, in ``workers`` processes (None: ``default_workers()``), for both
    the model input and its heatmap. Results are appended chunk by chunk (``chunk_size`` images) and
    flushed; heatmaps are written by ``writers`` threads while the model scores the next chunk, and a
    chunk's rows are appended once its pictures are on disk. ``heatmaps``: "anomalous" (the flagged
    images, default), "all" or "none" (True / False: all / none).

    Heatmaps are at the image's own resolution, on one fixed colour scale for the whole run: from the
    typical value on normal images (blue) to twice the distance up to the pixel threshold (red), so the
    threshold sits mid-scale and colours mean the same thing in every picture.

    An unreadable image stops the command with a DataError naming it, after the results of the images
    before it are written (``skip_bad``: it is listed in errors.csv and the rest goes on). A predict
    that stops after writing results keeps its staging folder; ``resume`` continues it without scoring
    its images again (see the module docstring). Returns every row (those of a resumed run included).

    ``run_dir`` is a run folder (torch) or an export folder (``anomalens export``); ``runtime`` (torch,
    onnxruntime, openvino; None: by the folder) chooses what runs it: its ``Predictor``
    (``anomalens.inference.load_predictor``), which scores each decoded chunk through
    ``anomalens.inference.predict`` whatever the runtime.
    """
    from concurrent.futures import ThreadPoolExecutor

    mode = heatmap_mode(heatmaps)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    inputs = [run_dir, *input_roots(images)]
    with prediction_stage(Path(out_dir), overwrite, inputs, resume) as stage:
        model = load_predictor(run_dir, runtime=runtime, device=device)
        records = prediction_records(images)
        done = stage.begin(job_identity(run_dir, [r.source for r in records], mode))
        todo = still_to_do([file_label(r.source) for r in records], done)
        if progress:
            logger.info("predict: %d images%s", len(records), f", {len(records) - len(todo)} done before" if done else "")
        drawing = mode != "none" and model.localizes
        if drawing:
            for name in (HEATMAPS_DIR, MASKS_DIR):
                (stage.path / name).mkdir(exist_ok=True)
        rule = model.decision_
        low, high = rule.heatmap_colour_range()
        pending: list[tuple[list[dict[str, Any]], list[Any], list[dict[str, Any]]]] = []

        def settle(keep: int) -> None:
            """Append the rows of finished chunks, in order, until at most ``keep`` chunks are in flight."""
            while pending and (len(pending) > keep or all(f.done() for f in pending[0][1])):
                rows, futures, errors = pending.pop(0)
                for row, future in zip([r for r in rows if "_pending" in r], futures):
                    row.pop("_pending")
                    row.update(future.result())
                stage.append(rows, errors)

        with ThreadPoolExecutor(max_workers=writers or default_writers(), thread_name_prefix="heatmaps") as pool:
            try:
                batches = decoded_chunks(model, [records[i] for i in todo], chunk_size, pictures=drawing,
                                         workers=workers, desc="predict" if progress else None)
                for batch in batches:
                    bad = [k for k, error in enumerate(batch.errors) if error is not None]
                    stop = None if skip_bad or not bad else batch.errors[bad[0]]
                    good = [k for k in range(len(batch.indices)) if batch.errors[k] is None and (stop is None or k < bad[0])]
                    errors = [{"image": file_label(records[todo[batch.indices[k]]].source), "error": batch.errors[k]}
                              for k in bad] if skip_bad else []
                    rows: list[dict[str, Any]] = []
                    futures: list[Any] = []
                    if good:
                        images_in = batch.images[good] if len(good) < len(batch.indices) else batch.images
                        names = [file_label(records[todo[batch.indices[k]]].source) for k in good]
                        result = predict(model, images_in, names)
                        for j, k in enumerate(good):
                            index = todo[batch.indices[k]]
                            record = records[index]
                            # normalised: 0.5 at the image threshold, the typical normal image at 0.05
                            row = result_row(names[j], result.scores[j], result.normalized_scores[j],
                                             result.labels[j], rule.image_threshold)
                            if drawing and result.maps is not None and (mode == "all" or row["anomalous"]):
                                row["_pending"] = True
                                futures.append(pool.submit(
                                    write_heatmap, stage.path, f"{index:05d}_{Path(record.name).stem}",
                                    batch.pictures[k], record.source, result.maps[j], low, high,
                                    rule.pixel_threshold if result.masks is not None else None,
                                    {key: row[key] for key in ("score", "normalized_score", "threshold", "anomalous")}))
                            rows.append(row)
                    pending.append((rows, futures, errors))
                    settle(keep=2)
                    if stop is not None:
                        settle(keep=0)
                        raise DataError(stop)
                settle(keep=0)
            except RuntimeError as exc:  # a dead decoding worker, noticed while the model ran
                if model.runtime != "torch":  # exports decode in threads: no worker process to die
                    raise
                from anomalens.data.torch_dataset import worker_death

                death = worker_death(exc)
                if death is None:
                    raise
                raise death from None
            finally:
                for _, futures, _ in pending:
                    for future in futures:
                        future.cancel()
    return stage.rows
