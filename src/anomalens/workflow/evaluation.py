"""``test``: score DATA's test split with a run and write metrics.json, scores.csv, plots and report.html."""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from anomalens.benchmark_protocols import benchmark_metrics
from anomalens.catalog import load_detector
from anomalens.data import AnomalyDataset, ImageRecord, TensorImageDataset
from anomalens.detector import Detector
from anomalens.errors import DataError
from anomalens.metrics import evaluate, image_curves
from anomalens.outputs import write_json
from anomalens.outputs.folders import staged_update
from anomalens.outputs.targets import check_not_input, check_target
from anomalens.outputs.names import METRICS_FILE, TEST_OUTPUTS
from anomalens.progress import stage as logged_stage
from anomalens.tracking import Tracker, provenance_tags
from anomalens.workflow.calibration import calibration_images_in
from anomalens.workflow.common import as_test_dataset, run_categories

logger = logging.getLogger("anomalens")

# What the metrics and the report import (scikit-learn, scipy.stats, matplotlib's figures, Jinja2: ~2 s of a
# 2-core machine's CPU together). `test` imports them in a thread while the model loads and scores: most of
# that time is spent waiting on the weights file or inside torch, which leaves the interpreter free.
_METRICS_AND_REPORT_MODULES = (
    "sklearn.metrics", "anomalens.report.operator_warnings", "anomalens.report.breakdown",
    "anomalens.report.html_report", "anomalens.report.plots", "matplotlib.backends.backend_agg",
)


def ground_truth_masks(records: Sequence[ImageRecord], size: tuple[int, int]) -> np.ndarray:
    """Ground-truth masks resized (nearest) to the detector's input size; all False for normals."""
    dataset = TensorImageDataset(records, size)
    return np.stack([dataset[i]["mask"][0].numpy() > 0.5 for i in range(len(records))])


def predict_with_masks(detector: Detector, records: Sequence[ImageRecord], with_masks: bool, progress: bool):
    """``detector.predict(records)`` and the ground-truth masks at its input size, from one decode of each
    image (in worker processes): (DetectionResult, masks (N, H, W) bool or None). Batches are whole
    multiples of the detector's batch size, so the model sees exactly the batches ``predict`` would give it."""
    from anomalens.data import ImageBatch, iterate_batches

    batch_size = int(detector.setting("batch_size"))
    chunk = batch_size * max(1, 64 // batch_size)
    height, width = detector.input_size
    # Decoded working images are held a chunk at a time: at most about 64 images' worth of 256² pixels (a
    # 2048² working image for tiling is 64 of those), so memory does not grow with the working size.
    chunk = min(chunk, max(1, (64 * 256 * 256) // (height * width)))
    scores, maps, masks = [], [], []
    batches = iterate_batches(records, detector.input_size, chunk, channels=detector.image_channels,
                              desc=f"{detector.name} test" if progress else None, decode=detector.params.get("decode"))
    for batch in batches:
        s, m = detector.score(ImageBatch(batch["image"]), progress=False)
        scores.append(s)
        if m is not None:
            maps.append(m)
        if with_masks:
            masks.append(batch["mask"][:, 0].numpy() > 0.5)
    result = detector.decision_.apply(np.concatenate(scores), np.concatenate(maps) if maps else None)
    return result, (np.concatenate(masks) if with_masks else None)


def image_loader(records: Sequence[ImageRecord], size: tuple[int, int]):
    dataset = TensorImageDataset(records, size)
    return lambda i: dataset[i]["image"].permute(1, 2, 0).numpy()


def reconstruction_loader(detector, records: Sequence[ImageRecord]):
    """For detectors that reconstruct (autoencoders, GANs): indices → their reconstructions as (H, W[, C]) in [0, 1].

    Only the images the report shows are reconstructed, in one batched call (AnoGAN's latent search
    runs once for all of them).
    """
    if not detector.reconstructs:
        return None

    def load(indices: list[int]) -> list[np.ndarray]:
        outputs = np.asarray(detector.reconstruct([records[i] for i in indices])[1], dtype=np.float32)
        # (N, C, H, W) → (H, W, C) each, or (H, W) for one channel
        return [out[0] if out.shape[0] == 1 else np.moveaxis(out, 0, -1) for out in outputs]

    return load


def test_run(
    run_dir: str | Path,
    data: str | Path | AnomalyDataset,
    out_dir: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
    report: bool = True,
    tracker: Tracker | None = None,
) -> dict[str, Any]:
    """Score the test split of ``data``; write metrics.json, scores.csv, plots and report.html.

    Returns the metrics. Outputs go into ``out_dir`` (default: the run folder); ``metrics.json`` is
    written last, so its presence means the whole report is there. ``tracker`` (``anomalens.tracking``):
    logs the written report (parameters, every figure of metrics.json, report.html, the plots).
    """
    importing = _import_in_background(_METRICS_AND_REPORT_MODULES if report else _METRICS_AND_REPORT_MODULES[:3])
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    check_target(out_dir)
    check_not_input(out_dir, [data])  # a report never goes into the data it scores
    detector = load_detector(run_dir, device=device)
    dataset = as_test_dataset(data, run_categories(run_dir))
    records = dataset.test
    if not records:
        raise DataError(f"{data}: has no test images (expected test/good and test/<defect> folders)")
    labels = np.array([r.label for r in records], dtype=np.int64)
    size = detector.input_size
    with staged_update(out_dir, kind="report", inputs=[data], last=METRICS_FILE, replaces=TEST_OUTPUTS) as stage:
        start = time.perf_counter()
        with logged_stage(f"test {detector.name} on {len(records)} images", enabled=progress):
            result, masks = predict_with_masks(detector, records, dataset.has_masks, progress)
        seconds = time.perf_counter() - start
        importing.join()
        from anomalens.report import TestReport, per_category_metrics, per_defect_type_metrics, report_warnings

        pixel_maps = result.maps if masks is not None else None
        what = "metrics and report" if report else "metrics"
        with logged_stage(what, enabled=progress), contextlib.ExitStack() as drawing:
            if report:  # the case figures need no metric: drawn (forked) while this process computes them
                report_writer = drawing.enter_context(TestReport(
                    stage, names=[r.name for r in records], defect_types=[r.defect_type for r in records],
                    labels=labels, scores=result.scores, normalized_scores=detector.decision_.normalized(result.scores),
                    threshold=detector.threshold_, predicted=result.labels, load_image=image_loader(records, size),
                    maps=result.maps, masks=masks, pixel_threshold=detector.pixel_threshold_,
                    loss_curves=detector.history_ or None,
                    load_reconstructions=reconstruction_loader(detector, records)))
                report_writer.draw_cases()
            curves = image_curves(labels, result.scores)  # once, for the metrics and the report's curves
            metrics = evaluate(labels, result.scores, detector.threshold_, masks=masks, maps=pixel_maps,
                               predicted=result.labels, curves=curves)
            if report:
                report_writer.draw_curves(metrics, curves)
            metrics.update(benchmark_metrics(dataset, result, masks))  # the benchmark's own metrics (LOCO sPRO, ...)
            metrics.update(run_description(detector, records, labels, seconds))
            shared = calibration_images_in(run_dir, records)
            if shared:
                metrics["calibration_images_in_test"] = shared
                logger.warning("%d of the %d test images were used to calibrate this run's threshold "
                               "(calibration.json): TPR, TNR and balanced accuracy at the threshold are optimistic — "
                               "test on images the calibration did not see", shared, len(records))
            undefined = undefined_metrics(metrics)
            if undefined:
                metrics["undefined"] = undefined
            metrics["per_defect_type"] = per_defect_type_metrics(
                labels, result.scores, [r.defect_type for r in records], result.labels, masks, pixel_maps)
            categories = [r.category for r in records]
            if any(categories):  # a unified run: each product on its own, beside the whole
                metrics["per_category"] = per_category_metrics(labels, result.scores, categories, detector.threshold_,
                                                               result.labels, masks, pixel_maps)
            warnings = report_warnings(metrics, detector.decision_)
            if warnings:
                metrics["warnings"] = warnings
            if report:
                report_writer.finish(metrics, title=f"anomalens · {detector.name} · {dataset.name}")
        write_json(stage / METRICS_FILE, metrics)  # undefined values (NaN) are written as null
    if tracker is not None:
        track_test(tracker, detector, data, metrics, run_dir, out_dir)
    return metrics


def track_test(tracker: Tracker, detector: Detector, data: Any, metrics: dict[str, Any], run_dir: Path,
               out_dir: Path) -> None:
    """Log a written test report: the run's parameters, metrics.json's figures (per defect type as
    ``per_defect_type.<type>.<metric>``), and metrics.json, scores.csv, report.html and the plots as artefacts."""
    from anomalens.workflow.fit import tracked_params

    name = str(data) if not isinstance(data, AnomalyDataset) else data.name
    tags = provenance_tags(data, detector=detector.name, run_folder=run_dir.resolve(), stage="test")
    fitted = None if tracker.active else tracker.find_run({"anomalens.run_folder": tags["anomalens.run_folder"],
                                                           "anomalens.stage": "fit"})
    if fitted:  # MLflow shows the test under the tracked fit of the same run folder
        tags["mlflow.parentRunId"] = fitted
    with tracker.run(f"test {detector.name} {name}", tags):
        tracker.log_params(tracked_params(detector, name))
        tracker.log_metrics(metrics)
        for output in sorted(TEST_OUTPUTS):
            tracker.log_artifact(out_dir / output)


test_run.__test__ = False  # a user's `from anomalens import test_run` is not a pytest test


def run_description(detector: Detector, records: Sequence[ImageRecord], labels: np.ndarray,
                    seconds: float) -> dict[str, Any]:
    """What metrics.json says of the run beside the metrics: the detector, its rule, the data, the speed."""
    return {
        "detector": detector.name,
        "n_images": len(records),
        "n_anomalous": int(labels.sum()),
        "threshold_source": detector.decision_.description,
        "pixel_threshold": detector.pixel_threshold_,
        "min_area": detector.decision_.min_area,
        "test_seconds": round(seconds, 3),
        "images_per_second": round(len(records) / seconds, 2) if seconds > 0 else None,
        "backbone": detector.params.get("backbone"),
        "image_size": list(detector.input_size),
        "device": str(detector.device),
    }


def _import_in_background(modules: Sequence[str]) -> threading.Thread:
    """Import ``modules`` in a daemon thread; ``join()`` it before using them. An import that fails is left to
    the code that needs the module, which then reports it."""

    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the real import reports it, in its place
                return

    thread = threading.Thread(target=run, name="anomalens-imports", daemon=True)
    thread.start()
    return thread


def undefined_metrics(metrics: dict[str, Any]) -> dict[str, str]:
    """{metric: why it is undefined} for the metrics that are NaN (written as null in metrics.json)."""
    n, n_anomalous = metrics.get("n_images"), metrics.get("n_anomalous")
    if n_anomalous == 0:
        why = "no anomalous image in the test set"
    elif n is not None and n_anomalous == n:
        why = "no normal image in the test set"
    else:
        why = "not computable on this test set"
    return {k: why for k, v in metrics.items() if isinstance(v, float) and math.isnan(v)}
