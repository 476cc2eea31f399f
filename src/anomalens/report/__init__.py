"""Visual test reports: heatmap overlays, plots, metrics per defect type and the HTML report.

All figures are rendered with :class:`matplotlib.figure.Figure` (Agg), never
through ``pyplot``, so importing this package does not change the user's
matplotlib backend or global state. Pages are Jinja2 templates with
autoescaping (``anomalens/report/templates``).
"""

from anomalens.report.breakdown import PixelCurves, per_defect_type_metrics, pixel_curves
from anomalens.report.html_report import write_test_report
from anomalens.report.operator_warnings import report_warnings
from anomalens.report.overlay import (
    annotate_heatmap,
    case_thumbnail,
    draw_mask_contours,
    heatmap_range,
    overlay_heatmap,
    render_heatmap,
    to_original_size,
)
from anomalens.report.plots import (
    plot_loss_curves,
    plot_pixel_roc,
    plot_precision_recall,
    plot_pro_curve,
    plot_roc,
    plot_score_histogram,
)
from anomalens.report.templating import render_page

__all__ = [
    "overlay_heatmap",
    "annotate_heatmap",
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
