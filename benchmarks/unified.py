"""One model for many products against one model per product (issue 27, item 4).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/unified.py --size stpm=128  # patchcore + stpm, 5 categories
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/unified.py --detectors patchcore --categories brick coffee
    .venv/bin/python benchmarks/unified.py --smoke --output /tmp/unified      # padim, 2 categories, 64 px

Data: the synthetic categories of ``harness.datasets`` (120 training normals, 30 normal + 40 defective test
images, 256 px each), gathered under one root (links) for the unified model. For each detector:

- per product: ``anomalens fit DETECTOR CATEGORY`` and ``anomalens test`` on that category, one fresh process
  each (``harness.run_job``: wall time, peak RSS);
- unified: ``anomalens fit DETECTOR ROOT --unified`` once on every category's normals, and ``anomalens test RUN
  ROOT``, whose ``per_category`` figures are the unified model's accuracy on each product.

Reported per category: image / pixel AUROC, AUPRO, and TPR / TNR at each model's own threshold (the unified
model has one threshold for every product); in total: fit seconds (the per-product fits added up), the largest
peak RSS, and the size of what is deployed (the run folders' model files added up).
Settings: every detector's defaults except ``threshold_folds=1`` (a hold-out threshold: the cross-fitted one
costs the same extra on both sides and does not change what is compared) and, for STPM, ``epochs`` (the same
number of epochs on both sides: the unified model sees five times the images per epoch).
Results: ``results/unified/results.{json,md}`` with the machine and its load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from harness import RESULTS, ROOT, WORK, Results, Run, describe, describe_run, machine, markdown, run_job, table
from harness.cli import output_options, rebuild_report, refuse_smoke_into
from harness.datasets import synthetic_category

SUITE = "unified"
OUTPUT = RESULTS / "unified"
HERE_WORK = WORK / "unified"
CATEGORIES = ["brick", "grass", "gravel", "coffee", "chelsea"]
DETECTORS = ["patchcore", "stpm"]
FIT_PARAMS = {"patchcore": ["-p", "threshold_folds=1"], "padim": [],
              "stpm": ["-p", "threshold_folds=1", "-p", "epochs=5"]}
MODEL_FILES = ("detector.json", "weights.safetensors")  # what a deployment copies of a run
FRESH = False  # --fresh: measure again what an earlier, stopped invocation measured
CLI = [sys.executable, "-c", "import sys; from anomalens.cli import main; sys.exit(main())"]
FIGURES = ("image_auroc", "pixel_auroc", "aupro", "tpr", "tnr")


def _threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", "2"))


def unified_root(categories: list[str], smoke: bool) -> Path:
    """A dataset root holding the categories (links to the shared synthetic folders)."""
    root = HERE_WORK / ("data-smoke" if smoke else "data") / "-".join(categories)
    root.mkdir(parents=True, exist_ok=True)
    for category in categories:
        link = root / category
        if not link.exists():
            link.symlink_to(_category(category, smoke), target_is_directory=True)
    return root


def _category(name: str, smoke: bool) -> Path:
    if not smoke:
        return synthetic_category(name)
    from anomalens.data import make_synthetic_category

    folder = HERE_WORK / "data-smoke" / "categories" / name
    if not (folder / "train").is_dir():
        return make_synthetic_category(folder.parent, source=name, n_train=20, n_test_good=6, n_test_defect=8,
                                       image_size=64)
    return folder


def model_megabytes(run: Path) -> float:
    return round(sum((run / name).stat().st_size for name in MODEL_FILES if (run / name).is_file()) / 1e6, 3)


def fit_and_test(detector: str, data: Path, run: Path, extra: list[str]) -> dict:
    """Fit then test in fresh processes; the fit's time and peak RSS, the test's metrics. A measurement is kept
    beside its run (``measured.json``, with the settings it was made with), so a stopped suite continues where it
    stopped instead of fitting again; --fresh measures everything again."""
    settings = {"detector": detector, "data": str(data), "params": FIT_PARAMS[detector], "extra": extra}
    kept = run / "measured.json"
    if kept.is_file() and not FRESH:
        measured = json.loads(kept.read_text())
        if measured.get("settings") == settings:
            return measured["figures"]
    figures = _fit_and_test(detector, data, run, extra)
    kept.write_text(json.dumps({"settings": settings, "figures": figures}))
    return figures


def _fit_and_test(detector: str, data: Path, run: Path, extra: list[str]) -> dict:
    fit = run_job([*CLI, "fit", detector, str(data), "-o", str(run), "-q", "--device", "cpu", "--overwrite",
                   *FIT_PARAMS[detector], *extra], threads=_threads(), src=ROOT / "src")
    test = run_job([*CLI, "test", str(run), str(data), "-q", "--device", "cpu", "--no-report"],
                   threads=_threads(), src=ROOT / "src")
    metrics = json.loads((run / "metrics.json").read_text())
    return {"fit_seconds": fit.seconds, "fit_peak_rss_mb": fit.peak_rss_mb, "test_seconds": test.seconds,
            "test_peak_rss_mb": test.peak_rss_mb, "model_mb": model_megabytes(run), "metrics": metrics}


def measure(detector: str, categories: list[str], smoke: bool, image_size: int | None) -> list[dict]:
    extra = ["--image-size", "64"] if smoke else (["--image-size", str(image_size)] if image_size else [])
    runs = HERE_WORK / "runs"
    per_product = {c: fit_and_test(detector, _category(c, smoke), runs / f"{detector}-{c}", extra) for c in categories}
    unified = fit_and_test(detector, unified_root(categories, smoke), runs / f"{detector}-unified", [*extra, "--unified"])
    rows = []
    for category in categories:
        own = per_product[category]["metrics"]
        shared = unified["metrics"]["per_category"][category]
        row = {"detector": detector, "category": category}
        for key in FIGURES:
            row[f"separate_{key}"] = own.get(key)
            row[f"unified_{key}"] = shared.get(key)
        rows.append(row)
    mean = {"detector": detector, "category": "mean"}
    for key in FIGURES:
        for side in ("separate", "unified"):
            values = [r[f"{side}_{key}"] for r in rows if isinstance(r[f"{side}_{key}"], float)]
            mean[f"{side}_{key}"] = sum(values) / len(values) if values else None
    rows.append(mean)
    totals = {"detector": detector, "categories": len(categories),
              "separate_fit_seconds": sum(p["fit_seconds"] for p in per_product.values()),
              "unified_fit_seconds": unified["fit_seconds"],
              "separate_test_seconds": sum(p["test_seconds"] for p in per_product.values()),
              "unified_test_seconds": unified["test_seconds"],
              "separate_peak_rss_mb": max(p["fit_peak_rss_mb"] for p in per_product.values()),
              "unified_peak_rss_mb": unified["fit_peak_rss_mb"],
              "separate_model_mb": sum(p["model_mb"] for p in per_product.values()),
              "unified_model_mb": unified["model_mb"],
              "unified_overall_image_auroc": unified["metrics"].get("image_auroc")}
    return rows + [{"totals": totals}]


COLUMNS = [("detector", "detector"), ("category", "category"),
           ("image AUROC separate", "separate_image_auroc"), ("unified", "unified_image_auroc"),
           ("pixel AUROC separate", "separate_pixel_auroc"), ("unified", "unified_pixel_auroc"),
           ("AUPRO separate", "separate_aupro"), ("unified", "unified_aupro"),
           ("TPR separate", "separate_tpr"), ("unified", "unified_tpr"),
           ("TNR separate", "separate_tnr"), ("unified", "unified_tnr")]
TOTAL_COLUMNS = [("detector", "detector"), ("categories", "categories", None),
                 ("fit s: separate (sum)", "separate_fit_seconds", 1), ("unified", "unified_fit_seconds", 1),
                 ("test s: separate (sum)", "separate_test_seconds", 1), ("unified", "unified_test_seconds", 1),
                 ("fit peak RSS MB: separate (max)", "separate_peak_rss_mb", 0), ("unified", "unified_peak_rss_mb", 0),
                 ("deployed MB: separate (sum)", "separate_model_mb", 2), ("unified", "unified_model_mb", 2),
                 ("unified image AUROC over all products", "unified_overall_image_auroc")]


def report(results: Results) -> str:
    return markdown(
        "One model for many products against one model per product (issue 27, item 4)",
        [f"Machine: {describe(results.machine, load=False)}; " + "; ".join(describe_run(r) for r in results.runs) + ".",
         f"Data: {results.sections['data']}. Settings: {results.sections['fit_settings']}"],
        "Accuracy per category (`separate`: the category's own model and threshold; `unified`: the one model, with "
        "its one threshold, on that category's test images):",
        table([r for r in results.rows if "totals" not in r], COLUMNS),
        "Cost in total (one process per fit; peak RSS of the fit process):",
        table([r["totals"] for r in results.rows if "totals" in r], TOTAL_COLUMNS),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--categories", nargs="+", default=CATEGORIES)
    parser.add_argument("--detectors", nargs="+", default=DETECTORS, choices=sorted(FIT_PARAMS))
    parser.add_argument("--size", action="append", default=[], metavar="DETECTOR=N",
                        help="the image size of one detector (default: its own, 256 px)")
    parser.add_argument("--fresh", action="store_true", help="measure again what a stopped invocation measured")
    output_options(parser, OUTPUT, smoke="padim on brick and coffee at 64 px")
    args = parser.parse_args()
    refuse_smoke_into(parser, args, OUTPUT)
    if args.report_only:
        rebuild_report(args.output / "results.json", args.output / "results.md", SUITE, report)
        return
    if args.smoke:
        args.categories, args.detectors = ["brick", "coffee"], ["padim"]
    global FRESH
    FRESH = args.fresh
    sizes = {d: int(n) for d, n in (item.split("=", 1) for item in args.size)}
    run = Run()
    rows: list[dict] = []
    for detector in args.detectors:
        rows += measure(detector, args.categories, args.smoke, sizes.get(detector))
        print(f"{detector}: done", flush=True)
    entry = run.record()
    data = (("synthetic categories " + ", ".join(args.categories))
            + (" (smoke: 20 training images, 64 px)" if args.smoke else
               " (120 training normals, 30 normal + 40 defective test images each, 256 px)"))
    settings = "; ".join(f"{d}: defaults " + " ".join(FIT_PARAMS[d])
                         + (f" at {sizes[d]} px" if d in sizes else "") for d in args.detectors)
    results = Results(SUITE, rows=rows, machine=machine("cpu"), settings={"categories": args.categories,
                      "detectors": args.detectors, "threads": _threads()}, runs=[entry],
                      sections={"data": data, "fit_settings": settings})
    text = report(results)
    results.write(args.output / "results", text)
    print(text)


if __name__ == "__main__":
    main()
