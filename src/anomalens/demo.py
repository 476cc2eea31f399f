"""``anomalens demo``: the main job end to end on built-in data.

Builds MVTec-AD-layout categories with synthetic defects from real photos bundled in scikit-image,
fits a detector on each, tests it and writes one report per category plus an index page.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

from anomalens.workflow import fit_run, staged_directory, test_run

DEMO_SOURCES = ("brick", "coffee")


def run_demo(
    output: str | Path = "anomalens-demo",
    model: str = "padim",
    sources: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_defect: int = 30,
    image_size: int = 256,
    params: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Generate data, fit, test; returns {category: metrics}. Everything lands in ``output``."""
    from anomalens.data import make_synthetic_category

    sources = list(sources or DEMO_SOURCES)
    output = Path(output)
    results: dict[str, dict[str, Any]] = {}
    with staged_directory(output, overwrite=overwrite, kind="demo") as stage:
        for source in sources:
            print(f"[{source}] generating a synthetic category ({n_train} normal training images)...", flush=True)
            data = make_synthetic_category(stage / "data", source=source, n_train=n_train, n_test_good=n_test_good,
                                           n_test_defect=n_test_defect, image_size=image_size, seed=0)
            run = stage / "runs" / source
            print(f"[{source}] fitting {model}...", flush=True)
            fit_run(model, data, run, params=params, progress=progress)
            metrics = test_run(run, data, progress=progress)
            results[source] = metrics
            shown = {k: metrics[k] for k in ("image_auroc", "pixel_auroc", "aupro", "tpr", "tnr") if k in metrics}
            print(f"[{source}] " + "  ".join(f"{k}={v:.3f}" for k, v in shown.items()), flush=True)
        _write_index(stage, model, results)
    print(f"demo report: {output / 'index.html'}")
    return results


def _write_index(stage: Path, model: str, results: dict[str, dict[str, Any]]) -> None:
    keys = ["image_auroc", "pixel_auroc", "aupro", "threshold", "tpr", "tnr", "images_per_second"]
    head = "".join(f"<th>{k}</th>" for k in ["category", *keys])
    rows = []
    for name, metrics in results.items():
        cells = "".join(f"<td>{metrics[k]:.3f}</td>" if isinstance(metrics.get(k), float) else f"<td>{metrics.get(k, '')}</td>" for k in keys)
        link = f'<a href="runs/{html.escape(name)}/report.html">{html.escape(name)}</a>'
        rows.append(f"<tr><td>{link}</td>{cells}</tr>")
    (stage / "index.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>anomalens demo</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;border-bottom:1px solid #ddd}</style>"
        f"<h1>anomalens demo · {html.escape(model)}</h1>"
        "<p>Synthetic defects (scratches, stains, holes, pasted patches) on real photos from scikit-image; "
        "the detector saw only normal images. Click a category for its full report.</p>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table>\n"
    )
