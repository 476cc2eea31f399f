"""The fit → calibrate → test → predict workflow, shared by the CLI and the Python API.

Every function that writes files writes them into a temporary folder first and moves them into place
only when everything succeeded, so bad input never leaves a half-written run or output folder.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from anomalens.data import AnomalyDataset, ImageRecord, TensorImageDataset, list_images, load_dataset, load_image
from anomalens.catalog import create_detector, load_detector
from anomalens.detector import Detector
from anomalens.errors import AnomalensError, DataError
from anomalens.metrics import evaluate

RUN_INFO_FILE = "run.json"


# ------------------------------------------------------------------------------- file handling
@contextlib.contextmanager
def staged_directory(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; rename it to ``final`` on success, delete it on error."""
    final = Path(final)
    if final.exists() and not overwrite and (final.is_file() or any(final.iterdir())):
        raise AnomalensError(f"{final}: already exists; choose another folder or pass --overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    os.replace(stage, final)


def _move_into(stage: Path, target: Path, last: str | None = None) -> None:
    """Move every entry of ``stage`` into ``target`` (replacing), ``last`` at the very end."""
    entries = sorted(stage.iterdir(), key=lambda p: p.name == last)
    for entry in entries:
        dest = target / entry.name
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(entry, dest)
    shutil.rmtree(stage, ignore_errors=True)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=lambda v: v.item() if hasattr(v, "item") else str(v)) + "\n")


def _as_dataset(data: str | Path | AnomalyDataset) -> AnomalyDataset:
    return data if isinstance(data, AnomalyDataset) else load_dataset(data)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux/macOS)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# ----------------------------------------------------------------------------------------- fit
def fit_run(
    model: str,
    data: str | Path | AnomalyDataset,
    run_dir: str | Path,
    params: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Detector:
    """Fit ``model`` on the normal training images of ``data`` and save it to ``run_dir``."""
    detector = create_detector(model, **(params or {}))
    dataset = _as_dataset(data)
    if not dataset.train:
        raise DataError(f"{getattr(data, 'name', data)}: no training images")
    run_dir = Path(run_dir)
    with staged_directory(run_dir, overwrite=overwrite) as stage:
        start = time.perf_counter()
        detector.fit(dataset.train, progress=progress)
        seconds = time.perf_counter() - start
        detector.save(stage)
        _write_json(stage / RUN_INFO_FILE, {
            "detector": model,
            "data": str(data) if not isinstance(data, AnomalyDataset) else data.name,
            "n_train_images": len(dataset.train),
            "fit_seconds": round(seconds, 3),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "threshold": detector.threshold_,
            "threshold_source": detector.decision_.description,
        })
    return detector


# ------------------------------------------------------------------------------------- helpers
def ground_truth_masks(records: Sequence[ImageRecord], size: tuple[int, int]) -> np.ndarray:
    """Ground-truth masks resized (nearest) to the detector's input size; all False for normals."""
    dataset = TensorImageDataset(records, size)
    return np.stack([dataset[i]["mask"][0].numpy() > 0.5 for i in range(len(records))])


def _image_loader(records: Sequence[ImageRecord], size: tuple[int, int]):
    dataset = TensorImageDataset(records, size)
    return lambda i: dataset[i]["image"].permute(1, 2, 0).numpy()


def _reconstruction_loader(detector, records: Sequence[ImageRecord]):
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


# ---------------------------------------------------------------------------------------- test
def test_run(
    run_dir: str | Path,
    data: str | Path | AnomalyDataset,
    out_dir: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
    report: bool = True,
) -> dict[str, Any]:
    """Score the test split of ``data``; write metrics.json, scores.csv, plots and report.html.

    Returns the metrics. Outputs go into ``out_dir`` (default: the run folder); ``metrics.json`` is
    written last, so its presence means the whole report is there.
    """
    from anomalens.report import write_test_report

    run_dir = Path(run_dir)
    detector = load_detector(run_dir, device=device)
    dataset = _as_dataset(data)
    records = dataset.test
    if not records:
        raise DataError(f"{data}: has no test images (expected test/good and test/<defect> folders)")
    labels = np.array([r.label for r in records], dtype=np.int64)
    size = detector.input_size
    masks = ground_truth_masks(records, size) if dataset.has_masks else None
    start = time.perf_counter()
    result = detector.predict(records, progress=progress)
    seconds = time.perf_counter() - start
    pixel_maps = result.maps if masks is not None else None
    metrics = evaluate(labels, result.scores, detector.threshold_, masks=masks, maps=pixel_maps, predicted=result.labels)
    metrics.update({
        "detector": detector.name,
        "n_images": len(records),
        "n_anomalous": int(labels.sum()),
        "threshold_source": detector.decision_.description,
        "pixel_threshold": detector.pixel_threshold_,
        "min_area": detector.decision_.min_area,
        "test_seconds": round(seconds, 3),
        "images_per_second": round(len(records) / seconds, 2) if seconds > 0 else None,
    })
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = out_dir / f".test-partial-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        if report:
            write_test_report(
                stage,
                names=[r.name for r in records],
                defect_types=[r.defect_type for r in records],
                labels=labels,
                scores=result.scores,
                threshold=detector.threshold_,
                metrics=metrics,
                load_image=_image_loader(records, size),
                maps=result.maps,
                masks=masks,
                pixel_threshold=detector.pixel_threshold_,
                title=f"anomalens · {detector.name} · {dataset.name}",
                loss_curves=detector.history_ or None,
                load_reconstructions=_reconstruction_loader(detector, records),
            )
        _write_json(stage / "metrics.json", metrics)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _move_into(stage, out_dir, last="metrics.json")
    return metrics


# ----------------------------------------------------------------------------------- calibrate
def calibrate_run(
    run_dir: str | Path,
    data: str | Path | AnomalyDataset,
    method: str = "f1",
    clear_border: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Re-set the run's decision rule on labelled data (the test split of ``data``, else its normals).

    method "f1": F1-optimal threshold (normal-score quantile when there are no defects);
    method "area": the seed's minimum-area + threshold search, with the held-out share of ``data``'s
    training normals as validation normals.
    """
    run_dir = Path(run_dir)
    detector = load_detector(run_dir, device=device)
    dataset = _as_dataset(data)
    records = dataset.test or dataset.train
    normals = detector.holdout_split(dataset.train)[1] if dataset.train and dataset.test else ()
    info = detector.calibrate(records, method=method, normal_records=normals, clear_border=clear_border, progress=progress)
    detector.save_decision(run_dir)
    info.update({"method": method, "n_images": len(records), "n_anomalous": int(sum(r.label for r in records))})
    _write_json(run_dir / "calibration.json", info)
    return info


# ------------------------------------------------------------------------------------- predict
def _predict_records(images: str | Path | Sequence[str | Path]) -> list[ImageRecord]:
    paths: list[Path] = []
    for item in [images] if isinstance(images, (str, Path)) else images:
        item = Path(item)
        if item.is_dir():
            found = list_images(item)
            if not found:
                raise DataError(f"{item}: no images found (png, jpg, bmp, tif, webp)")
            paths.extend(found)
        elif item.is_file():
            paths.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    return [ImageRecord(source=p, label=-1, name=p.name) for p in paths]


def predict_images(
    run_dir: str | Path,
    images: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    device: str | None = None,
    overwrite: bool = False,
    heatmaps: bool = True,
    chunk_size: int = 64,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Score new images; write predictions.csv / .jsonl and, per image, a heatmap overlay and a mask.

    Heatmaps are at the image's own resolution, on one fixed colour scale for the whole run: from the
    typical value on normal images (blue) to twice the distance up to the pixel threshold (red), so the
    threshold sits mid-scale and colours mean the same thing in every picture.
    """
    from PIL import Image

    from anomalens.report import draw_mask_contours, overlay_heatmap

    detector = load_detector(run_dir, device=device)
    records = _predict_records(images)
    for record in records:  # fail before any work on an unreadable file
        load_image(record.source)
    rows: list[dict[str, Any]] = []
    with staged_directory(Path(out_dir), overwrite=overwrite) as stage:
        if heatmaps and detector.localizes:
            (stage / "heatmaps").mkdir()
            (stage / "masks").mkdir()
        reference = detector.decision_.map_reference
        low = reference if reference is not None else 0.0
        high = 2 * (detector.pixel_threshold_ or 1.0) - low
        for start, result in detector.predict_in_chunks(records, chunk_size, progress=progress):
            for i, record in enumerate(records[start : start + chunk_size]):
                row = {
                    "image": str(record.source),
                    "score": float(result.scores[i]),
                    "anomalous": bool(result.labels[i]),
                    "threshold": detector.threshold_,
                }
                if heatmaps and result.maps is not None:
                    image = load_image(record.source)
                    amap = np.asarray(Image.fromarray(result.maps[i]).resize(image.shape[1::-1], Image.BILINEAR))
                    overlay = overlay_heatmap(image, amap, low, high)
                    stem = f"{start + i:05d}_{Path(record.name).stem}"
                    if result.masks is not None:
                        mask = amap > detector.pixel_threshold_
                        overlay = draw_mask_contours(overlay, mask, (255, 255, 255))
                        Image.fromarray((mask * 255).astype(np.uint8)).save(stage / "masks" / f"{stem}_mask.png")
                        row["defect_area_fraction"] = float(mask.mean())
                        row["mask"] = f"masks/{stem}_mask.png"
                    Image.fromarray(overlay).save(stage / "heatmaps" / f"{stem}.png")
                    row["heatmap"] = f"heatmaps/{stem}.png"
                rows.append(row)
        fields = ["image", "score", "anomalous", "threshold", "defect_area_fraction", "heatmap", "mask"]
        with open(stage / "predictions.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        with open(stage / "predictions.jsonl", "w") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in rows)
    return rows
