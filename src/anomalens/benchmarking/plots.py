"""The leaderboard's figures (matplotlib, Agg, no display): per-category bars with their 95 % intervals, and
accuracy against throughput. Each is returned as PNG bytes, for the results folder and for the HTML page."""

from __future__ import annotations

import io
from typing import Any

__all__ = ["accuracy_vs_throughput", "category_bars"]

_COLOURS = ["#0550ae", "#bc4c00", "#1a7f37", "#8250df", "#cf222e", "#6e7781", "#116329", "#953800"]


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def category_bars(rows: list[dict], detectors: list[str], categories: list[str], key: str, title: str) -> bytes:
    """Grouped bars: one group per category (and the mean), one bar per detector, whiskers its interval."""
    import numpy as np
    from matplotlib.figure import Figure

    width = 0.8 / max(1, len(detectors))
    figure = Figure(figsize=(max(5.0, 1.1 * len(categories) * max(1, len(detectors)) ** 0.5 + 2), 3.4))
    axes = figure.add_subplot()
    lows = []
    for i, detector in enumerate(detectors):
        cells = [next((r.get(key) for r in rows if r["detector"] == detector and r["category"] == c), None)
                 for c in categories]
        x = np.arange(len(categories)) + (i - (len(detectors) - 1) / 2) * width
        value = np.array([c["value"] if c else np.nan for c in cells])
        low = np.array([c["ci_low"] if c else np.nan for c in cells])
        high = np.array([c["ci_high"] if c else np.nan for c in cells])
        lows += [v for v in low if v == v]
        axes.bar(x, value, width * 0.92, label=detector, color=_COLOURS[i % len(_COLOURS)])
        axes.errorbar(x, value, yerr=[np.clip(value - low, 0, None), np.clip(high - value, 0, None)], fmt="none",
                      ecolor="black", elinewidth=1, capsize=3)
    axes.set_xticks(np.arange(len(categories)), categories)
    bottom = min([0.5] + lows)
    axes.set_ylim(max(0.0, bottom - 0.05), 1.01)
    axes.set_ylabel(title)
    axes.set_title(f"{title} with 95 % bootstrap intervals", fontsize=10, pad=22)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=min(6, len(detectors)), frameon=False)
    figure.tight_layout()
    return _png(figure)


def accuracy_vs_throughput(rows: list[dict], detectors: list[str], key: str = "image_auroc",
                           title: str = "image AUROC") -> bytes:
    """One point per (detector, category) — test images per second against the figure, with its interval —
    and a large marker per detector for its mean over the categories."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    figure = Figure(figsize=(5.6, 3.8))
    axes = figure.add_subplot()
    for i, detector in enumerate(detectors):
        colour = _COLOURS[i % len(_COLOURS)]
        own = [r for r in rows if r["detector"] == detector and key in r and r.get("test_images_per_second")]
        mean = [r for r in own if r["category"] == "mean"]
        points = [r for r in own if r["category"] != "mean"]
        for group, size, label in ((points, 5, None if mean else detector), (mean, 10, f"{detector} (mean)")):
            if not group:
                continue
            x = [r["test_images_per_second"] for r in group]
            y = [r[key]["value"] for r in group]
            err = [[max(0.0, r[key]["value"] - r[key]["ci_low"]) for r in group],
                   [max(0.0, r[key]["ci_high"] - r[key]["value"]) for r in group]]
            axes.errorbar(x, y, yerr=err, fmt="o", markersize=size, color=colour, alpha=0.9 if size > 5 else 0.55,
                          elinewidth=1, capsize=2, label=label)
            if size == 5:
                for r in group:
                    axes.annotate(r["category"], (r["test_images_per_second"], r[key]["value"]), fontsize=7,
                                  color=colour, xytext=(4, 2), textcoords="offset points")
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.xaxis.set_minor_formatter(ScalarFormatter())
    axes.tick_params(axis="x", which="minor", labelsize=7)
    axes.set_xlabel("test images per second (log scale)")
    axes.set_ylabel(title)
    axes.set_title(f"{title} vs throughput (small: per category)", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return _png(figure)
