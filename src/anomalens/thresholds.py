"""Threshold rules shared by every detector.

- ``quantile_threshold``: from normal scores alone (the default; works without any defective sample).
- ``f1_threshold``: F1-optimal on labelled data (``calibrate``), None when a class is missing.
- ``area_threshold_search``: the seed's "finetune" for localising detectors — a pixel threshold plus a
  minimum defect area; an image is defective when a connected region of ``map > threshold`` has at
  least ``min_area`` pixels. ``clear_border=True`` first drops regions touching the image border, as the
  2021 reference code did; it is off by default because with smooth maps (PaDiM, PatchCore) a low
  threshold makes the whole image one border-touching region that clearing would silently discard.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from skimage.measure import label as label_regions
from skimage.segmentation import clear_border as clear_regions_at_border

from anomalens.progress import iterate_progress

# The reference searches minimum areas 5..1000 px in steps of 5 at 256×256; other sizes scale with area.
REFERENCE_SIZE = 256 * 256
REFERENCE_MIN_AREAS = tuple(range(5, 1001, 5))


def quantile_threshold(normal_scores: np.ndarray, quantile: float) -> float:
    """Threshold from normal scores alone: their ``quantile`` (e.g. 0.99 → about 1% false alarms).

    The 'higher' rule returns an observed score, so ``score > threshold`` is false for at least that
    share of the normal images it was estimated on.
    """
    scores = np.asarray(normal_scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no normal scores to set a threshold from")
    return float(np.quantile(scores, quantile, method="higher"))


def f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """F1-optimal threshold on labelled data, or None when it lacks anomalous or normal images.

    Returning None rather than a degenerate value is what keeps a calibration set without anomalies
    from producing a threshold that flags everything.
    """
    from anomalens.metrics import f1_max

    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return None
    return float(f1_max(labels, scores)[1])


def largest_defect_areas(maps: np.ndarray, threshold: float, clear_border: bool = False) -> np.ndarray:
    """(N,) pixel count of the largest 8-connected region of ``map > threshold`` (per image)."""
    areas = np.zeros(len(maps), dtype=np.int64)
    for i, amap in enumerate(maps):
        binary = amap > threshold
        regions = label_regions(clear_regions_at_border(binary) if clear_border else binary, connectivity=2)
        if regions.max() > 0:
            areas[i] = np.bincount(regions.ravel())[1:].max()
    return areas


def scaled_min_areas(image_shape: Sequence[int]) -> np.ndarray:
    """The reference's minimum-area grid, scaled from 256×256 to ``image_shape`` (H, W)."""
    scale = image_shape[0] * image_shape[1] / REFERENCE_SIZE
    return np.unique(np.maximum(1, np.round(np.array(REFERENCE_MIN_AREAS) * scale)).astype(np.int64))


def area_threshold_search(
    normal_maps: np.ndarray,
    maps: np.ndarray,
    labels: np.ndarray,
    n_thresholds: int = 200,
    clear_border: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """The seed's finetune: choose (min_area, threshold) for the "any region ≥ min_area" rule.

    Step 1, on ``normal_maps`` (validation normals): for each minimum area, the lowest threshold from
    which on no normal map has a region that large. Thresholds are searched on a grid of ``n_thresholds`` values
    from the median to the maximum of the normal maps.
    Step 2, on labelled ``maps``: keep the pair with the best (TPR + TNR) / 2; without anomalous images,
    the best TNR, ties going to the smallest area (the most sensitive rule), and the note says so.
    """
    labels = np.asarray(labels)
    grid = np.linspace(float(np.median(normal_maps)), float(normal_maps.max()), n_thresholds)
    worst_normal_area = np.array([
        largest_defect_areas(normal_maps, t, clear_border).max()
        for t in iterate_progress(grid, progress, "area search: normals")
    ])
    min_areas = scaled_min_areas(normal_maps.shape[1:])
    pairs = []
    for min_area in min_areas:
        # The lowest threshold from which upwards no normal region reaches min_area. Scanning from the
        # top matters with clear_border: at very low thresholds the whole image is one region touching
        # the border, which clearing removes, so "no large region" would hold for a degenerate reason.
        unsafe = np.nonzero(worst_normal_area >= min_area)[0]
        first_safe = 0 if len(unsafe) == 0 else unsafe[-1] + 1
        if first_safe < len(grid):
            pairs.append((int(min_area), float(grid[first_safe])))
    if not pairs:  # only possible when normal maps are constant; the max is then the only safe threshold
        pairs = [(int(min_areas[0]), float(grid[-1]))]
    areas_at = {t: largest_defect_areas(maps, t, clear_border) for t in iterate_progress(sorted({t for _, t in pairs}), progress, "area search: labelled")}
    has_both = labels.min() != labels.max() if labels.size else False
    best: tuple[float, int, float] | None = None
    for min_area, threshold in pairs:
        predicted = areas_at[threshold] >= min_area
        tnr = float(np.mean(~predicted[labels == 0])) if (labels == 0).any() else float("nan")
        tpr = float(np.mean(predicted[labels == 1])) if (labels == 1).any() else float("nan")
        score = (tpr + tnr) / 2 if has_both else (tnr if (labels == 0).any() else tpr)
        if best is None or score > best[0]:
            best = (score, min_area, threshold)
    score, min_area, threshold = best
    note = (f"best (TPR + TNR) / 2 = {score:.3f} on {len(labels)} labelled images" if has_both else
            f"calibration data has only {'normal' if (labels == 0).any() else 'anomalous'} images: "
            f"chose the pair with the best {'TNR' if (labels == 0).any() else 'TPR'} ({score:.3f})")
    return {"min_area": min_area, "threshold": threshold, "score": score, "note": note, "n_pairs": len(pairs),
            "clear_border": clear_border}
