"""Visual test reports: heatmap overlays, plots and an HTML report.

All figures are rendered with :class:`matplotlib.figure.Figure` (Agg), never
through ``pyplot``, so importing this package does not change the user's
matplotlib backend or global state.
"""

from anomalens.report.html_report import write_test_report
from anomalens.report.overlay import draw_mask_contours, heatmap_range, overlay_heatmap, render_heatmap, to_original_size
from anomalens.report.plots import plot_loss_curves, plot_roc, plot_score_histogram

__all__ = [
    "overlay_heatmap",
    "draw_mask_contours",
    "heatmap_range",
    "render_heatmap",
    "to_original_size",
    "plot_roc",
    "plot_score_histogram",
    "plot_loss_curves",
    "write_test_report",
]
