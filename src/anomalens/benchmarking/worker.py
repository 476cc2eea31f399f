"""One benchmark job, run in its own process (:func:`anomalens.benchmarking.jobs.run_job`): fit one detector
on one category with one seed, score the test split, and leave in ``folder`` what the statistics need.

Writes ``scores.csv`` (one row per test image: name, defect type, label, score, the run's own decision) and,
for a detector with maps on a category with masks, ``pixels.npz`` (the per-image pixel summary of
:func:`anomalens.benchmarking.statistics.pixel_summary`, a few hundred kB instead of the maps). Returns the
measurements as a JSON-able dict; the peak memory is measured by the launcher around this process.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

SCORES_FILE = "scores.csv"
PIXELS_FILE = "pixels.npz"
SCORE_FIELDS = ("name", "defect_type", "label", "score", "flagged")


def run_detector_job(job: dict[str, Any], folder: str) -> dict[str, Any]:
    """Fit ``job["model"]`` (the registry name behind the label ``job["detector"]``) with ``job["params"]`` on ``job["data"]`` (read as ``job["layout"]``), score
    its test split, write the files of the module docstring into ``folder``; return the measurements."""
    import numpy as np
    import torch

    from anomalens import create_detector
    from anomalens.benchmark_protocols import benchmark_metrics
    from anomalens.data import load_dataset
    from anomalens.errors import DataError
    from anomalens.metrics import evaluate
    from anomalens.outputs import write_bytes, write_text
    from anomalens.workflow.evaluation import predict_with_masks

    from anomalens.benchmarking.statistics import aupro_replicates, pixel_auroc_replicates, pixel_summary

    dataset = load_dataset(job["data"], layout=job.get("layout"))
    records = dataset.test
    labels = np.array([r.label for r in records], dtype=np.int64)
    if not records or labels.all() or not labels.any():
        raise DataError(f"{job['data']}: the test split needs normal and anomalous images to benchmark on")
    detector = create_detector(job.get("model", job["detector"]), **job["params"])
    start = time.perf_counter()
    detector.fit(dataset.train, progress=False)
    fit_seconds = time.perf_counter() - start
    with_masks = dataset.has_masks and detector.localizes
    start = time.perf_counter()
    result, masks = predict_with_masks(detector, records, with_masks, progress=False)
    test_seconds = time.perf_counter() - start
    maps = result.maps if masks is not None else None
    metrics = evaluate(labels, result.scores, detector.threshold_, masks=masks, maps=maps, predicted=result.labels)
    own = {k: v for k, v in benchmark_metrics(dataset, result, masks).items() if k != "layout"}

    out = Path(folder)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(SCORE_FIELDS)
    for record, score, flagged in zip(records, result.scores, result.labels):
        writer.writerow([record.name, record.defect_type, record.label, repr(float(score)), int(flagged)])
    write_text(out / SCORES_FILE, table.getvalue())
    pixel_check = None  # the summary's own full-sample figures: how far binning moves them from the exact ones
    if maps is not None:
        summary = pixel_summary(masks, maps)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **summary)
        write_bytes(out / PIXELS_FILE, buffer.getvalue())
        ones = np.ones((1, len(records)))
        pixel_check = {"pixel_auroc": float(pixel_auroc_replicates(summary, ones)[0]),
                       "aupro": float(aupro_replicates(summary, ones)[0])}

    def number(key: str) -> float | None:
        value = metrics.get(key)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    return {
        "n_train": len(dataset.train), "n_test": len(records), "n_anomalous": int(labels.sum()),
        "image_size": list(detector.input_size), "layout": dataset.layout,
        "image_auroc": number("image_auroc"), "pixel_auroc": number("pixel_auroc"), "aupro": number("aupro"),
        "threshold": float(detector.threshold_), "tpr": number("tpr"),
        "fpr": None if number("tnr") is None else 1 - number("tnr"), "balanced_accuracy": number("balanced_accuracy"),
        "benchmark_metrics": own, "binned_pixel_metrics": pixel_check,
        "fit_seconds": round(fit_seconds, 3), "test_seconds": round(test_seconds, 3),
        "test_images_per_second": round(len(records) / test_seconds, 2) if test_seconds > 0 else None,
        "torch_threads": torch.get_num_threads(),
    }
