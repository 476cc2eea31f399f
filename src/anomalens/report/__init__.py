"""Visual test reports: heatmap overlays, case figures, plots, metrics per defect type and the HTML report.

Pictures of single images (overlays, thumbnails, the report's case figures) are drawn with numpy and
Pillow. The curves are :class:`matplotlib.figure.Figure` objects (Agg), never drawn through ``pyplot``, so
the user's matplotlib backend and global state are left alone; :mod:`anomalens.report.plots` (and with it
matplotlib's figure machinery) is imported only when a curve is drawn. Pages are Jinja2 templates with
autoescaping (``anomalens/report/templates``).
"""

from typing import Any

from anomalens.report.breakdown import PixelCurves, per_defect_type_metrics, pixel_curves
from anomalens.report.html_report import write_test_report
from anomalens.report.operator_warnings import report_warnings
from anomalens.report.overlay import (
    annotate_heatmap,
    case_figure,
    case_thumbnail,
    draw_mask_contours,
    heatmap_range,
    overlay_heatmap,
    render_heatmap,
    to_original_size,
)
from anomalens.report.templating import render_page

_PLOTS = {"plot_roc", "plot_precision_recall", "plot_pixel_roc", "plot_pro_curve", "plot_score_histogram",
          "plot_loss_curves"}

__all__ = [
    "overlay_heatmap",
    "annotate_heatmap",
    "case_figure",
    "case_thumbnail",
    "draw_mask_contours",
    "heatmap_range",
    "render_heatmap",
    "to_original_size",
    "plot_roc",
    "plot_precision_recall",
    "plot_pixel_roc",
    "plot_pro_curve",
    "plot_score_histogram",
    "plot_loss_curves",
    "per_defect_type_metrics",
    "pixel_curves",
    "PixelCurves",
    "report_warnings",
    "render_page",
    "write_test_report",
]


def __getattr__(name: str) -> Any:
    # PEP 562 lazy attribute: matplotlib's figure machinery costs ~0.5 s to import and `anomalens test`
    # draws its curves in a forked process; the main process never needs it.
    if name in _PLOTS:
        from anomalens.report import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'anomalens.report' has no attribute {name!r}")
