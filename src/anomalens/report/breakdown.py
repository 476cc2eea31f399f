"""Metrics broken down by defect type, and the pixel-level curves the report draws.

A single image AUROC over a whole category hides which defects a detector misses: on MVTec AD a model
can rank scratches perfectly and small contaminations at chance. So each defect type is evaluated on its
own, against the same reference, the normal test images ("good"): image AUROC of (good + that type),
the share of that type flagged at the threshold, and, where ground-truth masks exist, pixel AUROC and
AUPRO over (good + that type). The numbers come from :mod:`anomalens.metrics`, so a per-type value is
exactly what ``evaluate`` would give on that subset.

The pixel ROC and PRO *curves* are for drawing: they are sampled at a few hundred thresholds (quantiles
of the normal and defect pixels, denser where the PRO curve lives, FPR ≤ 0.3) instead of at every
distinct pixel value, which for 10⁷ pixels would cost a full sort for a line nobody can tell apart.
The areas printed next to them are the exact ones of :mod:`anomalens.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from anomalens.cores import available_cores
from anomalens.metrics import aupro, evaluate, image_auroc, pixel_inputs

__all__ = ["per_defect_type_metrics", "per_category_metrics", "PixelCurves", "pixel_curves", "PRO_FPR_LIMIT"]

#: The FPR up to which the PRO curve is drawn and AUPRO integrated (as in ``anomalens.metrics.aupro``).
PRO_FPR_LIMIT = 0.3
# Pixels read to place the curve thresholds: quantiles of a strided sample are plenty for where to sample.
_QUANTILE_SAMPLE = 1_000_000


def per_category_metrics(
    labels: ArrayLike,
    scores: ArrayLike,
    categories: Sequence[str],
    threshold: float,
    predicted: ArrayLike,
    masks: ArrayLike | None = None,
    maps: ArrayLike | None = None,
) -> dict[str, dict[str, float | int]]:
    """{category: metrics} for the test images of a unified dataset (one model for many products), in sorted
    order: :func:`anomalens.metrics.evaluate` on each category's own images (its normals and its defects),
    with the model's one threshold and its own decisions ``predicted``, plus ``n_images`` and
    ``n_anomalous``. A category's AUROC says how well the shared model ranks that product's images; its TPR /
    TNR at the shared threshold show what one threshold for every product costs."""
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    flagged = np.asarray(predicted).reshape(-1)
    names = np.asarray([str(c) for c in categories])
    if not (y.size == s.size == flagged.size == names.size):
        raise ValueError(f"labels ({y.size}), scores ({s.size}), predicted ({flagged.size}) and categories "
                         f"({names.size}) must have the same length")
    with_pixels = masks is not None and maps is not None
    out: dict[str, dict[str, float | int]] = {}
    for category in sorted(set(names.tolist())):
        rows = names == category
        metrics = evaluate(y[rows], s[rows], threshold,
                           masks=np.asarray(masks)[rows] if with_pixels else None,
                           maps=np.asarray(maps)[rows] if with_pixels else None, predicted=flagged[rows])
        out[category] = {**metrics, "n_images": int(rows.sum()), "n_anomalous": int(y[rows].sum())}
    return out


def per_defect_type_metrics(
    labels: ArrayLike,
    scores: ArrayLike,
    defect_types: Sequence[str],
    predicted: ArrayLike,
    masks: ArrayLike | None = None,
    maps: ArrayLike | None = None,
) -> dict[str, dict[str, float | int]]:
    """{defect type: metrics} for every defect type of the anomalous images, in sorted order.

    Each type is measured against all normal images (label 0): ``image_auroc`` (NaN without normal
    images), ``n_images`` of that type, ``detected`` = the share of them ``predicted`` flags (the detector's
    own decisions, so the minimum-area rule counts as it decided), ``median_score``; with ``masks`` and
    ``maps`` ((N, H, W), masks all False for normal images) also ``pixel_auroc`` and ``aupro`` over the
    pixels of the normal images and of that type's images (NaN when that type has no defect pixel).

    The values are exactly those of :mod:`anomalens.metrics` on each subset. The normal images' pixels,
    in every subset, are sorted once for all pixel AUROCs (see :class:`_PixelAurocs`), and the types are
    measured in threads, one per core: the sorting that dominates releases the GIL.
    """
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    flagged = np.asarray(predicted).reshape(-1) > 0
    types = np.asarray([str(t) for t in defect_types])
    if not (y.size == s.size == flagged.size == types.size):
        raise ValueError(f"labels ({y.size}), scores ({s.size}), predicted ({flagged.size}) and defect types "
                         f"({types.size}) must have the same length")
    with_pixels = masks is not None and maps is not None
    gts = np.asarray(masks) if with_pixels else None
    amaps = np.asarray(maps) if with_pixels else None
    if with_pixels and (gts.shape[0] != y.size or amaps.shape[0] != y.size):
        raise ValueError(f"masks {gts.shape} and maps {amaps.shape} must hold one (H, W) map per image ({y.size})")
    normal = y == 0
    defect_type_names = sorted(set(types[y == 1].tolist()))
    if with_pixels and defect_type_names:
        gts, amaps = pixel_inputs(gts, amaps)  # the checks and the dtype aupro / pixel_auroc apply, done once
        aurocs = _PixelAurocs(gts[normal], amaps[normal])

    def measure(defect_type: str) -> dict[str, float | int]:
        of_type = (types == defect_type) & (y == 1)
        subset = normal | of_type
        row: dict[str, float | int] = {
            "n_images": int(of_type.sum()),
            "image_auroc": image_auroc(y[subset], s[subset]),
            "detected": float(flagged[of_type].mean()),
            "median_score": float(np.median(s[of_type])),
        }
        if with_pixels:
            row["pixel_auroc"] = aurocs.with_images(gts[of_type], amaps[of_type])
            row["aupro"] = aupro(gts[subset], amaps[subset], fpr_limit=PRO_FPR_LIMIT)
        return row

    threads = min(len(defect_type_names), available_cores()) if with_pixels else 1
    if threads < 2:
        return {name: measure(name) for name in defect_type_names}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return dict(zip(defect_type_names, pool.map(measure, defect_type_names)))


class _PixelAurocs:
    """Pixel AUROCs of a fixed set of images (the normal ones) together with a few more (one defect type's),
    each equal to :func:`anomalens.metrics.pixel_auroc` on the union, with the fixed set's pixels sorted once.

    ``pixel_auroc`` counts, for every defect pixel, the normal pixels scoring below it and those scoring
    below or equal (binary searches in the sorted normal pixels). A count over a union is the sum of the
    counts over its parts, so each part is sorted on its own and searched; the integers, and so the AUROC,
    are those of the union sorted as one (the same division of the same numbers).
    """

    def __init__(self, masks: np.ndarray, maps: np.ndarray) -> None:
        self._negatives = np.sort(maps[~masks])
        self._positives = maps[masks]

    def with_images(self, masks: np.ndarray, maps: np.ndarray) -> float:
        """``pixel_auroc`` over the fixed images and these ((n, H, W) bool masks and maps of the same dtype)."""
        negatives = [self._negatives, np.sort(maps[~masks])]
        positives = [self._positives, maps[masks]]
        n_pos = sum(p.size for p in positives)
        n_neg = sum(n.size for n in negatives)
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        wins2 = 0  # 2 x (pairs won + half the ties): below + below-or-tied, over every (part, part) pair
        for negative in negatives:
            for positive in positives:
                if negative.size and positive.size:
                    wins2 += int(np.searchsorted(negative, positive, side="left").sum(dtype=np.int64))
                    wins2 += int(np.searchsorted(negative, positive, side="right").sum(dtype=np.int64))
        return wins2 / (2.0 * n_pos * n_neg)


@dataclass(frozen=True)
class PixelCurves:
    """Pixel ROC and PRO curves at the same thresholds, from the highest threshold (nothing flagged,
    FPR 0) to the lowest (everything flagged, FPR 1): each array has one value per threshold."""

    thresholds: np.ndarray
    fpr: np.ndarray  # share of normal pixels with map > threshold
    tpr: np.ndarray  # share of defect pixels with map > threshold
    pro: np.ndarray  # mean over defect regions of the share of the region's pixels with map > threshold


def pixel_curves(masks: ArrayLike, maps: ArrayLike, thresholds: ArrayLike | None = None) -> PixelCurves | None:
    """The pixel ROC and PRO curves of anomaly ``maps`` against ground-truth ``masks`` (both (N, H, W)).

    Regions are the 8-connected components of each image's mask, as :func:`anomalens.metrics.aupro`
    counts them. ``thresholds`` (default: a few hundred quantiles, see the module docstring) are where
    the curves are sampled; given every distinct map value they are the exact curves. None when there
    is no defect pixel or no normal pixel (no curve to draw).
    """
    gts = np.asarray(masks).astype(bool, copy=False)
    amaps = np.asarray(maps)
    if gts.shape != amaps.shape or gts.ndim != 3:
        raise ValueError(f"masks {gts.shape} and maps {amaps.shape} must both be (N, H, W)")
    normal_values = amaps[~gts]
    if normal_values.size == 0 or not gts.any():
        return None
    regions, n_regions = _regions(gts)
    defect_values = amaps[gts]
    region_of_pixel = regions[gts]
    if thresholds is None:
        thresholds = _curve_thresholds(normal_values, defect_values)
    # Descending thresholds, with +inf first (nothing flagged) and -inf last (everything flagged).
    thr = np.unique(np.asarray(thresholds, dtype=np.float64))
    thr = np.concatenate(([np.inf], thr[::-1], [-np.inf]))
    ascending = thr[::-1]

    def share_above(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """For each threshold of ``thr``: the (weighted) share of ``values`` above it."""
        # bin k = how many thresholds lie strictly below the value: v > ascending[j] exactly when j < k.
        bins = np.searchsorted(ascending, values.astype(np.float64, copy=False), side="left")
        counts = np.bincount(bins, weights=weights, minlength=ascending.size + 1)
        above_ascending = counts[::-1].cumsum()[::-1][1:]  # above_ascending[j] = sum of counts[k] for k > j
        total = counts.sum()
        return above_ascending[::-1] / total

    sizes = np.bincount(region_of_pixel, minlength=n_regions + 1)
    region_weights = 1.0 / sizes[region_of_pixel]  # each region weighs 1 in the PRO mean
    return PixelCurves(
        thresholds=thr,
        fpr=share_above(normal_values),
        tpr=share_above(defect_values),
        pro=share_above(defect_values, region_weights),
    )


def _regions(gts: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of every image's mask, never joined across images (one label array)."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connectivity within an image, nothing between images
    regions, n_regions = ndimage.label(gts, structure=structure)
    return regions, int(n_regions)


def _curve_thresholds(normal_values: np.ndarray, defect_values: np.ndarray) -> np.ndarray:
    """Quantiles of the normal pixels (all FPRs, and densely FPR ≤ 0.3 where the PRO curve is drawn) and of
    the defect pixels (the TPR axis): about 450 thresholds."""

    def sample(values: np.ndarray) -> np.ndarray:
        return values[:: max(1, values.size // _QUANTILE_SAMPLE)]

    normal_sample, defect_sample = sample(normal_values), sample(defect_values)
    return np.concatenate([
        np.quantile(normal_sample, np.linspace(0.0, 1.0, 201)),
        np.quantile(normal_sample, 1.0 - np.linspace(0.0, PRO_FPR_LIMIT, 151)),
        np.quantile(defect_sample, np.linspace(0.0, 1.0, 101)),
    ])
