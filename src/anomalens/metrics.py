"""Evaluation metrics for anomaly detection.

Conventions used throughout:

* higher score = more anomalous; an image (or pixel) is *predicted anomalous*
  when ``score > threshold`` (strictly greater);
* image labels are 0 (normal) / 1 (anomalous); the anomalous class is the
  positive class for every metric;
* anomaly maps (the pixel-level metrics live in :mod:`anomalens.pixel_metrics` and are re-exported
  here) are float arrays ``(N, H, W)``; ground-truth masks are bool
  arrays ``(N, H, W)`` (any non-zero value counts as defect), all False for
  normal images.

Metrics that are undefined for the given data (e.g. AUROC when only one class
is present) return ``float("nan")`` instead of raising, so that evaluating a
calibration set without defects still works.  Note that ``json.dumps`` writes
NaN as the non-standard token ``NaN``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from anomalens.pixel_metrics import SaturatedRegion, auc_spro, aupro, pixel_auroc, pixel_inputs

# scikit-learn is imported in the functions that use it: importing it costs ~1 s, and fit, predict and
# serve, which import this module through the workflow, never call them.

__all__ = [
    "ImageCurves",
    "image_curves",
    "image_auroc",
    "image_aupr",
    "f1_max",
    "pixel_auroc",
    "pixel_inputs",
    "aupro",
    "auc_spro",
    "SaturatedRegion",
    "threshold_metrics",
    "evaluate",
]

NAN = float("nan")


# --------------------------------------------------------------------------- helpers
def _image_inputs(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten image-level labels / scores."""
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if y.size == 0:
        raise ValueError("labels and scores are empty")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (anomalous)")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return y.astype(np.int64), s


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.any()) and not bool(y.all())


# --------------------------------------------------------------------------- image level
@dataclass(frozen=True)
class ImageCurves:
    """The ROC and precision-recall curves of image scores (anomalous = positive), as scikit-learn's
    ``roc_curve`` and ``precision_recall_curve`` return them: computed once by :func:`image_curves`, then
    read by the image metrics and drawn by the report, so every number and line comes from the same curve.

    ``roc`` is None with a single class (no ROC curve); ``precision_recall`` is None without an anomalous image.
    """

    roc: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # (fpr, tpr, thresholds)
    precision_recall: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # (precision, recall, thresholds)

    @property
    def auroc(self) -> float:
        """Area under the ROC curve (trapezoids): what ``roc_auc_score`` computes from this very curve."""
        if self.roc is None:
            return NAN
        from sklearn.metrics import auc

        return float(auc(self.roc[0], self.roc[1]))

    @property
    def average_precision(self) -> float:
        """AP = sum over thresholds of (R_n - R_{n-1}) P_n, the step integral ``average_precision_score``
        takes of this curve (-0.0 from round-off clipped to 0); NaN without both classes."""
        if self.roc is None or self.precision_recall is None:
            return NAN
        precision, recall, _ = self.precision_recall
        return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def image_curves(labels: ArrayLike, scores: ArrayLike) -> ImageCurves:
    """The ROC curve (both classes present) and the precision-recall curve (an anomalous image present)."""
    y, s = _image_inputs(labels, scores)
    return ImageCurves(roc=_roc_curve(y, s), precision_recall=_precision_recall_curve(y, s))


def _roc_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    if not _both_classes(y):
        return None
    from sklearn.metrics import roc_curve

    return tuple(roc_curve(y, s))


def _precision_recall_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    if not y.any():
        return None
    from sklearn.metrics import precision_recall_curve

    return tuple(precision_recall_curve(y, s))


def image_auroc(labels: ArrayLike, scores: ArrayLike, curves: ImageCurves | None = None) -> float:
    """Area under the ROC curve of image scores; NaN if only one class is present. ``curves``: the
    :func:`image_curves` of these labels and scores, when they are at hand."""
    if curves is None:
        curves = ImageCurves(roc=_roc_curve(*_image_inputs(labels, scores)), precision_recall=None)
    return curves.auroc


def image_aupr(labels: ArrayLike, scores: ArrayLike, curves: ImageCurves | None = None) -> float:
    """Average precision (area under the precision-recall curve), anomalous = positive.

    NaN if only one class is present (with no anomalies precision is
    undefined; with only anomalies AP is trivially 1 and meaningless).
    """
    return (curves or image_curves(labels, scores)).average_precision


def f1_max(labels: ArrayLike, scores: ArrayLike, curves: ImageCurves | None = None) -> tuple[float, float]:
    """Best F1 over all thresholds, and a threshold achieving it.

    The returned threshold follows the library rule ``score > threshold``:
    it lies midway between the lowest score predicted anomalous and the next
    lower score (or just below the minimum score when everything is flagged),
    so ``threshold_metrics(labels, scores, thr)["f1"]`` equals the returned F1.
    On ties in F1 the highest such threshold is returned (fewest alarms).
    Returns ``(nan, nan)`` when there is no anomalous image.
    """
    y, s = _image_inputs(labels, scores)
    curve = (curves or image_curves(y, s)).precision_recall
    if curve is None:
        return NAN, NAN
    precision, recall, thresholds = curve
    # precision/recall have one extra trailing entry (recall 0) without a threshold.
    p, r = precision[:-1], recall[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    # thresholds are ascending; take the last maximum = highest threshold.
    best = int(np.flatnonzero(f1 == f1.max())[-1])
    t = float(thresholds[best])  # sklearn: predicted anomalous = score >= t
    lower = s[s < t]
    if lower.size:
        below = float(lower.max())
        thr = (t + below) / 2.0
        if not below <= thr < t:  # adjacent floats: midpoint rounds onto t
            thr = below
    else:
        thr = float(np.nextafter(t, -np.inf))
    return float(f1[best]), float(thr)


def threshold_metrics(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, float | int]:
    """Confusion counts and rates at a fixed threshold (anomalous = ``score > threshold``).

    Keys: those of :func:`confusion_metrics` plus ``threshold``.
    """
    y, s = _image_inputs(labels, scores)
    return {**confusion_metrics(y, s > threshold), "threshold": float(threshold)}


def confusion_metrics(labels: ArrayLike, predicted: ArrayLike) -> dict[str, float | int]:
    """Confusion counts and rates of predicted labels (1 = flagged anomalous).

    Keys: ``tp, fp, tn, fn`` (ints), ``tpr`` (recall on anomalous images),
    ``tnr`` (fraction of normal images passed), ``balanced_accuracy`` =
    (tpr + tnr) / 2, ``precision``, ``f1``.  A rate whose denominator is zero
    (class absent, nothing flagged) is NaN; ``balanced_accuracy`` is NaN when
    either class is absent.
    """
    y, p = _image_inputs(labels, predicted)
    pred = p > 0
    pos = y == 1
    tp = int(np.count_nonzero(pred & pos))
    fp = int(np.count_nonzero(pred & ~pos))
    tn = int(np.count_nonzero(~pred & ~pos))
    fn = int(np.count_nonzero(~pred & pos))

    def ratio(num: int, den: int) -> float:
        return num / den if den else NAN

    tpr = ratio(tp, tp + fn)
    tnr = ratio(tn, tn + fp)
    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "tpr": tpr,
        "tnr": tnr,
        "balanced_accuracy": (tpr + tnr) / 2,  # NaN propagates if a class is absent
        "precision": ratio(tp, tp + fp),
        # 2tp / (2tp + fp + fn): 0 (not NaN) when anomalies exist but none are found.
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }


# --------------------------------------------------------------------------- all together
def evaluate(
    labels: ArrayLike,
    scores: ArrayLike,
    threshold: float,
    masks: ArrayLike | None = None,
    maps: ArrayLike | None = None,
    predicted: ArrayLike | None = None,
    curves: ImageCurves | None = None,
) -> dict[str, float | int]:
    """All metrics in one flat dict of plain Python floats / ints.

    ``predicted``: the detector's own labels when its decision is not ``score > threshold`` (the
    minimum-area rule); the confusion counts and rates are then those of these labels. ``curves``: the
    :func:`image_curves` of ``labels`` and ``scores`` when the caller has them (a report draws them too).

    Keys: ``image_auroc``, ``image_aupr``, ``image_f1_max``,
    ``image_f1_max_threshold``, the :func:`threshold_metrics` keys, and, when
    both ``masks`` and ``maps`` are given and the masks contain defect pixels,
    ``pixel_auroc`` and ``aupro`` (FPR limit 0.3).  Undefined values are NaN.
    """
    curves = curves or image_curves(labels, scores)
    out: dict[str, float | int] = {
        "image_auroc": curves.auroc,
        "image_aupr": curves.average_precision,
    }
    best_f1, best_thr = f1_max(labels, scores, curves)
    out["image_f1_max"] = best_f1
    out["image_f1_max_threshold"] = best_thr
    out.update(threshold_metrics(labels, scores, threshold))
    if predicted is not None:
        out.update(confusion_metrics(labels, predicted))
    if masks is not None and maps is not None:
        g, m = pixel_inputs(masks, maps)
        if g.shape[0] != np.asarray(scores).reshape(-1).size:
            raise ValueError(f"{g.shape[0]} masks/maps but {np.asarray(scores).size} image scores")
        if g.any():
            out["pixel_auroc"] = pixel_auroc(g, m)
            out["aupro"] = aupro(g, m)
    return {k: (v if isinstance(v, int) else float(v)) for k, v in out.items()}
