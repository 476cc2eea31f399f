"""``anomalens test``: evaluate a run on labelled images; metrics.json and report.html."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from anomalens.commands.options import add_common_arguments, add_data_arguments
from anomalens.commands.tune import add_track_argument


def add_test_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder (anomalens fit)")
    add_data_arguments(p, "as for fit (its test split is used)")
    p.add_argument("-o", "--output", help="where to write the report (default: the run folder)")
    p.add_argument("--no-report", action="store_true", help="metrics.json only, no plots")
    add_track_argument(p)
    add_common_arguments(p)
    p.set_defaults(func=run_test)


def run_test(args: argparse.Namespace) -> None:
    from anomalens.commands.options import data_source
    from anomalens.tracking import open_tracker
    from anomalens.workflow import test_run

    with open_tracker(args.track) as tracker:
        metrics = test_run(args.run, data_source(args), out_dir=args.output, device=args.device,
                           progress=not args.quiet, report=not args.no_report, tracker=tracker)
    print_metrics(metrics)
    out = Path(args.output or args.run)
    print(f"wrote {out / 'metrics.json'}" + ("" if args.no_report else f" and {out / 'report.html'}"))


def print_metrics(metrics: dict[str, Any]) -> None:
    """The headline metrics on one line; an undefined one (NaN: e.g. no defect in the test set) says why."""
    keys = ["image_auroc", "pixel_auroc", "aupro", "threshold", "tpr", "tnr", "balanced_accuracy", "images_per_second"]
    undefined = metrics.get("undefined") or {}
    parts = []
    for k in keys:
        value = metrics.get(k, "absent")
        if value == "absent":
            continue
        if value is None or (isinstance(value, float) and value != value):  # NaN: undefined on this test set
            parts.append(f"{k}=undefined ({undefined.get(k, 'not computable on this test set')})")
        else:
            parts.append(f"{k}={value:.4g}" if isinstance(value, float) else f"{k}={value}")
    print("  ".join(parts))
    for category, figures in (metrics.get("per_category") or {}).items():  # a unified run: each product
        shown = [f"{k}={figures[k]:.4g}" for k in ("image_auroc", "pixel_auroc", "aupro", "tpr", "tnr")
                 if isinstance(figures.get(k), float) and figures[k] == figures[k]]
        print(f"  {category}: " + "  ".join(shown))
