"""The metrics each public benchmark's community reports, beyond what :func:`anomalens.metrics.evaluate`
gives every dataset (image AUROC, pixel AUROC, AUPRO up to FPR 0.3, ...).

``anomalens test`` adds :func:`benchmark_metrics` to ``metrics.json``; what it holds depends on the layout
the dataset was read from (``AnomalyDataset.layout``):

* ``mvtec_loco`` (Bergmann et al., IJCV 2022): image AUROC of each anomalous split against all good test
  images (``image_auroc_logical_anomalies``, ``image_auroc_structural_anomalies``) and their mean
  (``image_auroc_mean_of_splits``); AUC-sPRO up to FPR 0.05 over the whole test set (``spro_0.05``), per
  split (``spro_0.05_logical_anomalies``, ...) and the mean over the splits — the paper's table entries.
* ``mvtec_ad2`` (Heckler-Kram et al. 2025): on ``test_public``, the only split with labels, image AUROC
  (``image_auroc_test_public``), AU-PRO up to FPR 0.05 (``aupro_0.05_test_public``) and SegF1
  (``seg_f1_test_public``: pixel F1 of the run's predicted masks, i.e. at the pixel threshold it set from
  normal images, never from the test set; the private splits are scored by MVTec's server only).
* every layout: ``layout``, its name. MVTec AD, VisA and BTAD papers report image / pixel AUROC and AUPRO,
  which ``evaluate`` already gives.

Pixel metrics are computed at the detector's input resolution, like the rest of ``metrics.json``: a
LOCO defect mask is resized to it (nearest, as the merged masks are) and its saturation area scaled by
the ratio of its resized to its original pixel count. A defect that vanishes at that resolution cannot
be scored and is left out of sPRO (the official evaluation upsamples the maps to the image instead).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from anomalens.data.io import read_pixels
from anomalens.data.records import AnomalyDataset, DefectConfig, ImageRecord
from anomalens.decision import DetectionResult
from anomalens.errors import DataError
from anomalens.metrics import SaturatedRegion, auc_spro, aupro, image_auroc

__all__ = ["SPRO_FPR_LIMIT", "benchmark_metrics", "loco_regions"]

#: The FPR up to which MVTec LOCO AD (AUC-sPRO) and MVTec AD 2 (AU-PRO) integrate.
SPRO_FPR_LIMIT = 0.05


def benchmark_metrics(dataset: AnomalyDataset, result: DetectionResult, masks: np.ndarray | None) -> dict[str, Any]:
    """The benchmark-specific metrics of ``result`` (the detector's output on ``dataset.test``, in order)
    given the ground-truth ``masks`` at the maps' resolution (or None); see the module docstring."""
    out: dict[str, Any] = {}
    if dataset.layout:
        out["layout"] = dataset.layout
    if dataset.layout == "mvtec_loco":
        out.update(_loco_metrics(dataset, result))
    elif dataset.layout == "mvtec_ad2":
        out.update(_mvtec_ad2_metrics(dataset, result, masks))
    return out


def _mean(values: Sequence[float]) -> float:
    """Mean, NaN as soon as one value is (an undefined split makes the mean undefined)."""
    return float(np.mean(values)) if values and not any(math.isnan(v) for v in values) else float("nan")


def _loco_metrics(dataset: AnomalyDataset, result: DetectionResult) -> dict[str, float]:
    records = dataset.test
    labels = np.array([r.label for r in records], dtype=np.int64)
    types = np.array([r.defect_type for r in records])
    scores = np.asarray(result.scores, dtype=np.float64)
    splits = dataset.defect_types
    selections = {split: np.flatnonzero((labels == 0) | (types == split)) for split in splits}
    out: dict[str, float] = {}
    for split, rows in selections.items():
        out[f"image_auroc_{split}"] = image_auroc(labels[rows], scores[rows])
    if len(splits) > 1:
        out["image_auroc_mean_of_splits"] = _mean([out[f"image_auroc_{s}"] for s in splits])
    anomalous = [r for r in records if r.label == 1]
    if result.maps is None or not dataset.defect_configs or not anomalous or not all(r.defect_masks for r in anomalous):
        return out  # image-level detector, or a category without ground truth: no sPRO
    maps = np.asarray(result.maps)
    regions = loco_regions(records, dataset.defect_configs, maps.shape[1:])
    key = f"spro_{SPRO_FPR_LIMIT:g}"
    out[key] = auc_spro(maps, regions, SPRO_FPR_LIMIT)
    for split, rows in selections.items():
        new_index = {int(old): new for new, old in enumerate(rows)}
        subset = [SaturatedRegion(new_index[r.image], r.mask, r.saturation_area) for r in regions if r.image in new_index]
        out[f"{key}_{split}"] = auc_spro(maps[rows], subset, SPRO_FPR_LIMIT)
    if len(splits) > 1:
        out[f"{key}_mean_of_splits"] = _mean([out[f"{key}_{s}"] for s in splits])
    return out


def _mask_values(path: Path) -> np.ndarray:
    """The stored 8-bit values of a mask file, (H, W) uint8 (colour masks: the largest channel)."""
    pixels = read_pixels(path)
    if pixels.dtype != np.uint8:
        pixels = np.rint(np.asarray(pixels, dtype=np.float32) * 255).astype(np.uint8)
    return pixels.max(axis=-1) if pixels.ndim == 3 else pixels


def _resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bool (H, W) → bool ``size``, nearest-exact: the resize the ground-truth masks get (TensorImageDataset)."""
    if mask.shape == tuple(size):
        return mask
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(tensor, size=tuple(size), mode="nearest-exact")[0, 0].numpy() > 0.5


def loco_regions(records: Sequence[ImageRecord], configs: dict[int, DefectConfig],
                 size: tuple[int, int]) -> list[SaturatedRegion]:
    """One :class:`~anomalens.metrics.SaturatedRegion` per defect mask file of ``records`` at ``size``.

    Each file's non-zero pixels are one defect; their value names its type in ``configs`` (LOCO's
    ``defects_config.json``), which gives the saturation area at the file's resolution, scaled here to
    ``size``. A file with no defect pixel, or none left at ``size``, gives no region.
    """
    regions: list[SaturatedRegion] = []
    for index, record in enumerate(records):
        for path in record.defect_masks:
            values = _mask_values(path)
            defect = values > 0
            found = np.unique(values[defect])
            if found.size == 0:
                continue
            if found.size > 1:
                raise DataError(f"{path}: holds pixel values {', '.join(map(str, found))}; MVTec LOCO puts one "
                                "defect in each mask file, all of its pixels one value")
            config = configs.get(int(found[0]))
            if config is None:
                raise DataError(f"{path}: pixel value {int(found[0])} is not a defect type of the category's "
                                f"defects_config.json (it lists {', '.join(map(str, sorted(configs)))})")
            full_area = int(defect.sum())
            resized = _resize_nearest(defect, size)
            area = int(resized.sum())
            if area == 0:
                continue
            saturation = config.saturation_area(full_area) * area / full_area
            regions.append(SaturatedRegion(index, resized, saturation))
    return regions


def _mvtec_ad2_metrics(dataset: AnomalyDataset, result: DetectionResult, masks: np.ndarray | None) -> dict[str, float]:
    labels = np.array([r.label for r in dataset.test], dtype=np.int64)
    out = {"image_auroc_test_public": image_auroc(labels, result.scores)}
    if masks is None or result.maps is None:
        return out
    out[f"aupro_{SPRO_FPR_LIMIT:g}_test_public"] = aupro(masks, result.maps, fpr_limit=SPRO_FPR_LIMIT)
    if result.masks is not None:
        predicted = np.asarray(result.masks, dtype=bool)
        true_positive = int(np.count_nonzero(predicted & masks))
        wrong = int(np.count_nonzero(predicted ^ masks))  # false positives + false negatives
        out["seg_f1_test_public"] = (2 * true_positive / (2 * true_positive + wrong)
                                     if true_positive + wrong else float("nan"))
    return out
