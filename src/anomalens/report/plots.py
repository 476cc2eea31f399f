"""Report plots: image ROC and precision-recall curves, pixel ROC and PRO curves, score histogram and loss
curves. (The per-image case figures are drawn with Pillow: :func:`anomalens.report.annotated.case_figure`.)

Figures are built as :class:`matplotlib.figure.Figure` objects, never through
``pyplot``: nothing is registered in pyplot's global figure list (so nothing
leaks over many reports) and the user's backend is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import ArrayLike

from anomalens.metrics import ImageCurves, image_curves
from anomalens.outputs.atomic import atomic_path
from anomalens.report.breakdown import PRO_FPR_LIMIT, PixelCurves

__all__ = [
    "save_figure",
    "plot_roc",
    "plot_precision_recall",
    "plot_pixel_roc",
    "plot_pro_curve",
    "plot_score_histogram",
    "plot_loss_curves",
    "NORMAL_COLOR",
    "ANOMALOUS_COLOR",
]

DPI = 100
#: The size of the report's side-by-side curves (inches at ``DPI``): five fit across a 1920 px screen.
SMALL_FIGURE = (3.4, 3.2)
NORMAL_COLOR = "tab:blue"
ANOMALOUS_COLOR = "tab:red"


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Save ``fig`` atomically (temporary file + rename) and release its artists.

    The format follows the file suffix (PNG when there is none).  A crash
    while rendering never leaves a half-written file under ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix[1:].lower() or "png"
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI)
    finally:
        fig.clear()  # drop references to the image data right away
    return path


def _labels_scores(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape or y.size == 0:
        raise ValueError(f"need as many labels as scores (>0), got {y.size} and {s.size}")
    return y, s


def plot_roc(
    labels: ArrayLike,
    scores: ArrayLike,
    path: str | os.PathLike[str],
    title: str = "ROC curve (image level)",
    threshold: float | None = None,
    figsize: tuple[float, float] = (5.5, 5.0),
    curves: ImageCurves | None = None,
) -> Path:
    """ROC curve of image scores with the AUROC in the legend and the chance diagonal.

    If ``threshold`` is given, the operating point ``score > threshold`` is
    marked.  ``curves``: :func:`anomalens.metrics.image_curves` of these labels and scores, when the
    caller has them (the metrics were read from the same curve).  Raises ``ValueError`` unless both
    classes are present.
    """
    y, s = _labels_scores(labels, scores)
    if y.min() == y.max():
        raise ValueError("a ROC curve needs both normal (0) and anomalous (1) images")
    curves = curves or image_curves(y, s)
    fpr, tpr, _ = curves.roc
    auc = curves.auroc

    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, color=ANOMALOUS_COLOR, lw=2, label=f"detector (AUROC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance (0.5)")
    if threshold is not None:
        pred = s > threshold
        op_tpr = pred[y == 1].mean()
        op_fpr = pred[y == 0].mean()
        ax.plot(
            op_fpr, op_tpr, "o", color="black", ms=7,
            label=f"threshold: TPR {op_tpr:.2f}, FPR {op_fpr:.2f}",
        )
    _unit_square(ax, "false positive rate (normal images flagged)", "true positive rate (anomalous flagged)", title,
                 small=figsize[0] < 4.5)
    ax.legend(loc="lower right", fontsize=7 if figsize[0] < 4.5 else 9)
    return save_figure(fig, path)


def _unit_square(ax, xlabel: str, ylabel: str, title: str, small: bool, xmax: float = 1.0) -> None:
    """Axes of a rate-vs-rate curve: [0, xmax] x [0, 1], grid, labels sized for the figure."""
    ax.set_xlim(-0.01 * xmax, 1.01 * xmax)
    ax.set_ylim(-0.01, 1.01)
    if xmax == 1.0:
        ax.set_aspect("equal")
    fontsize = 8 if small else 10
    ax.set_xlabel(xlabel, fontsize=fontsize)
    ax.set_ylabel(ylabel, fontsize=fontsize)
    ax.set_title(title, fontsize=fontsize + 1)
    ax.tick_params(labelsize=fontsize - 1)
    ax.grid(alpha=0.3)


def plot_precision_recall(
    labels: ArrayLike,
    scores: ArrayLike,
    path: str | os.PathLike[str],
    threshold: float | None = None,
    title: str = "Precision-recall (image level)",
    figsize: tuple[float, float] = SMALL_FIGURE,
    curves: ImageCurves | None = None,
) -> Path:
    """Precision vs recall of image scores (anomalous = positive), average precision in the legend.

    The dashed line is a detector that flags at random (precision = the share of anomalous images). It
    says more than ROC when defects are rare: a false-alarm rate that looks small on the ROC curve can
    still mean most alarms are false. ``threshold`` marks the operating point; ``curves`` as for
    :func:`plot_roc`. Raises ``ValueError`` unless both classes are present.
    """
    y, s = _labels_scores(labels, scores)
    if y.min() == y.max():
        raise ValueError("a precision-recall curve needs both normal (0) and anomalous (1) images")
    curves = curves or image_curves(y, s)
    precision, recall, _ = curves.precision_recall
    ap = curves.average_precision
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    ax.step(recall, precision, where="post", color=ANOMALOUS_COLOR, lw=2, label=f"detector (AP = {ap:.3f})")
    prevalence = float(y.mean())
    ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"random ({prevalence:.2f})")
    if threshold is not None:
        flagged = s > threshold
        if flagged.any():
            op_precision = float(y[flagged].mean())
            op_recall = float(flagged[y == 1].mean())
            ax.plot(op_recall, op_precision, "o", color="black", ms=7,
                    label=f"threshold: P {op_precision:.2f}, R {op_recall:.2f}")
    small = figsize[0] < 4.5
    _unit_square(ax, "recall (anomalous flagged)", "precision (flagged that are anomalous)", title, small)
    ax.legend(loc="lower left", fontsize=7 if small else 9)
    return save_figure(fig, path)


def plot_pixel_roc(
    curves: PixelCurves,
    path: str | os.PathLike[str],
    auroc: float | None = None,
    title: str = "ROC curve (pixel level)",
    figsize: tuple[float, float] = SMALL_FIGURE,
) -> Path:
    """The pixel ROC curve (:func:`anomalens.report.breakdown.pixel_curves`); ``auroc``, the exact pixel
    AUROC, goes in the legend."""
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    label = "detector" + (f" (AUROC = {auroc:.3f})" if auroc is not None and np.isfinite(auroc) else "")
    ax.plot(curves.fpr, curves.tpr, color=ANOMALOUS_COLOR, lw=2, label=label)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance (0.5)")
    small = figsize[0] < 4.5
    _unit_square(ax, "FPR (normal pixels flagged)", "TPR (defect pixels flagged)", title, small)
    ax.legend(loc="lower right", fontsize=7 if small else 9)
    return save_figure(fig, path)


def plot_pro_curve(
    curves: PixelCurves,
    path: str | os.PathLike[str],
    aupro: float | None = None,
    title: str = f"PRO curve (FPR ≤ {PRO_FPR_LIMIT:g})",
    figsize: tuple[float, float] = SMALL_FIGURE,
) -> Path:
    """Per-region overlap vs pixel FPR up to the AUPRO limit: how much of each defect, small ones weighing as
    much as large ones, is covered at a given false-alarm rate on normal pixels. ``aupro`` (the exact,
    normalised area) goes in the legend."""
    keep = curves.fpr <= PRO_FPR_LIMIT
    first_past = int(np.argmax(curves.fpr > PRO_FPR_LIMIT)) if (~keep).any() else None
    fpr, pro = curves.fpr[keep], curves.pro[keep]
    if first_past is not None:  # end the line exactly at the limit, as the integral does
        x0, x1 = curves.fpr[first_past - 1], curves.fpr[first_past]
        y0, y1 = curves.pro[first_past - 1], curves.pro[first_past]
        fpr = np.append(fpr, PRO_FPR_LIMIT)
        pro = np.append(pro, y0 + (PRO_FPR_LIMIT - x0) / (x1 - x0) * (y1 - y0))
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    label = "detector" + (f" (AUPRO = {aupro:.3f})" if aupro is not None and np.isfinite(aupro) else "")
    ax.plot(fpr, pro, color=ANOMALOUS_COLOR, lw=2, label=label)
    small = figsize[0] < 4.5
    _unit_square(ax, "FPR (normal pixels flagged)", "per-region overlap", title, small, xmax=PRO_FPR_LIMIT)
    ax.legend(loc="lower right", fontsize=7 if small else 9)
    return save_figure(fig, path)


def plot_score_histogram(
    labels: ArrayLike,
    scores: ArrayLike,
    threshold: float,
    path: str | os.PathLike[str],
    title: str = "Image anomaly scores",
    score_name: str = "anomaly score",
    figsize: tuple[float, float] = (7.5, 4.5),
) -> Path:
    """Overlapping histograms of normal vs anomalous image scores, with the threshold.

    Both classes share the same bins so their bars line up.  The threshold is
    a dashed vertical line labelled with its value; the legend gives the
    TPR / TNR it yields.  Works with a single class (e.g. a calibration set
    without defects): only that histogram and its rate are shown.
    """
    y, s = _labels_scores(labels, scores)
    n_bins = int(np.clip(np.ceil(2 * np.sqrt(s.size)), 10, 60))
    edges = np.histogram_bin_edges(s, bins=n_bins)

    small = figsize[0] < 6
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    for cls, name, color in ((0, "normal", NORMAL_COLOR), (1, "anomalous", ANOMALOUS_COLOR)):
        sel = s[y == cls]
        if sel.size:
            ax.hist(sel, bins=edges, color=color, alpha=0.5, edgecolor=color, lw=0.8,
                    label=f"{name} images (n={sel.size})")

    pred = s > threshold
    rates = []
    if (y == 1).any():
        rates.append(f"TPR {pred[y == 1].mean():.1%} of anomalous flagged")
    if (y == 0).any():
        rates.append(f"TNR {(~pred[y == 0]).mean():.1%} of normal passed")
    ax.axvline(threshold, color="black", ls="--", lw=1.5,
               label=f"threshold = {threshold:.4g}\n" + "\n".join(rates))
    # Keep the threshold visible even when it lies outside the score range.
    lo, hi = min(edges[0], threshold), max(edges[-1], threshold)
    pad = 0.03 * (hi - lo if hi > lo else 1.0)
    ax.set_xlim(lo - pad, hi + pad)
    fontsize = 8 if small else 10
    ax.text(threshold, 1.0, f" {threshold:.4g} ", transform=ax.get_xaxis_transform(),
            ha="center", va="bottom", fontsize=fontsize - 1, clip_on=False)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"{score_name}  (flagged anomalous when > threshold)", fontsize=fontsize)
    ax.set_ylabel("number of images", fontsize=fontsize)
    ax.tick_params(labelsize=fontsize - 1)
    ax.set_title(title, pad=16, fontsize=fontsize + 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize=7 if small else 9)
    return save_figure(fig, path)


def plot_loss_curves(
    curves: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    title: str = "Loss curves",
    figsize: tuple[float, float] = (7.0, 4.5),
) -> Path:
    """Loss vs epoch (1-based), one line per entry of ``curves`` (e.g. train / validation).

    The y axis turns logarithmic when positive losses span more than two decades.
    """
    series = {k: np.asarray(v, dtype=np.float64) for k, v in curves.items() if len(v)}
    if not series:
        raise ValueError("no loss values to plot")
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    for name, values in series.items():
        epochs = np.arange(1, values.size + 1)
        ax.plot(epochs, values, marker="o" if values.size <= 30 else None, ms=4, lw=1.8, label=name)
    all_values = np.concatenate(list(series.values()))
    finite = all_values[np.isfinite(all_values)]
    log = finite.size > 0 and finite.min() > 0 and finite.max() / finite.min() > 100
    if log:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fontsize = 8 if figsize[0] < 4.5 else 10
    ax.set_xlabel("epoch", fontsize=fontsize)
    ax.set_ylabel("loss (log scale)" if log else "loss", fontsize=fontsize)
    ax.tick_params(labelsize=fontsize - 1)
    ax.set_title(title, fontsize=fontsize + 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=fontsize - 1)
    return save_figure(fig, path)
