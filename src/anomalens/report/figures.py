"""The report's curves, drawn side by side at the size the page shows them: the score histogram, the image ROC
and precision-recall curves, the pixel ROC and PRO curves and the loss curves (matplotlib, in
:mod:`anomalens.report.plots`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from anomalens.metrics import ImageCurves
from anomalens.metrics import image_curves as compute_image_curves

__all__ = ["FIGURE_FILES", "draw_figures"]

#: The figures a report writes next to report.html (removed first when a report is written again).
FIGURE_FILES = ("score_histogram.png", "roc.png", "precision_recall.png", "pixel_roc.png", "pro_curve.png",
                "loss_curves.png")


def draw_figures(out: Path, y: np.ndarray, s: np.ndarray, threshold: float, both_classes: bool,
                 maps: np.ndarray | None, masks: np.ndarray | None, pixel_metrics: Mapping[str, float | None],
                 loss_curves: Mapping[str, Sequence[float]] | None,
                 image_curves: ImageCurves | None = None) -> list[dict[str, object]]:
    """Draw the report's curves at the size they are shown side by side; returns [{file, alt, width, height}]
    in page order. ``pixel_metrics``: the exact ``pixel_auroc`` and ``aupro`` for the legends (or None);
    ``image_curves``: the ROC and precision-recall curves the image metrics were read from (computed here
    when None)."""
    # matplotlib is imported here, in the process that draws: importing the report does not load it.
    from anomalens.report.breakdown import pixel_curves
    from anomalens.report.plots import (
        SMALL_FIGURE,
        plot_loss_curves,
        plot_pixel_roc,
        plot_precision_recall,
        plot_pro_curve,
        plot_roc,
        plot_score_histogram,
    )

    drawn: list[tuple[str, str]] = []
    histogram_size = (4.6, SMALL_FIGURE[1])
    plot_score_histogram(y, s, threshold, out / "score_histogram.png", figsize=histogram_size,
                         title="Image scores" + (": normal vs anomalous" if both_classes else ""))
    drawn.append(("score_histogram.png", "histogram of image scores, normal vs anomalous, with the threshold"))
    if both_classes:
        image_curves = image_curves or compute_image_curves(y, s)
        plot_roc(y, s, out / "roc.png", title="ROC (image level)", threshold=threshold, figsize=SMALL_FIGURE,
                 curves=image_curves)
        plot_precision_recall(y, s, out / "precision_recall.png", threshold=threshold, curves=image_curves)
        drawn += [("roc.png", "ROC curve of image scores"),
                  ("precision_recall.png", "precision-recall curve of image scores")]
    if maps is not None and masks is not None:
        curves = pixel_curves(masks, maps)
        if curves is not None:
            plot_pixel_roc(curves, out / "pixel_roc.png", auroc=pixel_metrics.get("pixel_auroc"))
            plot_pro_curve(curves, out / "pro_curve.png", aupro=pixel_metrics.get("aupro"))
            drawn += [("pixel_roc.png", "ROC curve of pixel scores"), ("pro_curve.png", "per-region-overlap curve")]
    if loss_curves:
        plot_loss_curves(loss_curves, out / "loss_curves.png", figsize=SMALL_FIGURE)
        drawn.append(("loss_curves.png", "loss curves per epoch"))
    figures = []
    for file, alt in drawn:
        width, height = _png_size(out / file)
        figures.append({"file": file, "alt": alt, "width": width, "height": height})
    return figures


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size
