"""Visual test reports: heatmap overlays, case figures, plots, metrics per defect type and the HTML report.

Pictures of single images (overlays, thumbnails, the report's case figures) are drawn with numpy and
Pillow. The curves are :class:`matplotlib.figure.Figure` objects (Agg), never drawn through ``pyplot``, so
the user's matplotlib backend and global state are left alone; :mod:`anomalens.report.plots` (and with it
matplotlib's figure machinery) is imported only when a curve is drawn. Pages are Jinja2 templates with
autoescaping (``anomalens/report/templates``).
"""

import importlib
from typing import Any

# Every name loads on first use (PEP 562): predict draws heatmaps with ``overlay`` alone, and matplotlib's
# figure machinery (``plots``, ~0.5 s) is imported only where a curve is drawn.
_WHERE = {
    **dict.fromkeys(["PixelCurves", "per_category_metrics", "per_defect_type_metrics", "pixel_curves"], "breakdown"),
    **dict.fromkeys(["TestReport", "write_test_report"], "html_report"),
    "report_warnings": "operator_warnings",
    **dict.fromkeys(["annotate_heatmap", "case_figure", "case_thumbnail"], "annotated"),
    **dict.fromkeys(["draw_mask_contours", "heatmap_range", "overlay_heatmap", "render_heatmap", "to_original_size"],
                    "overlay"),
    "render_page": "templating",
    **dict.fromkeys(["plot_roc", "plot_precision_recall", "plot_pixel_roc", "plot_pro_curve", "plot_score_histogram",
                     "plot_loss_curves"], "plots"),
}

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
    "per_category_metrics",
    "pixel_curves",
    "PixelCurves",
    "report_warnings",
    "render_page",
    "write_test_report",
    "TestReport",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'anomalens.report' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"anomalens.report.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
