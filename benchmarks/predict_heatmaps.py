"""Speed suite: what burning the score strip and colour bar into ``anomalens predict``'s heatmaps costs
(issue 16, item 4).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/predict_heatmaps.py            # 100 images, 3 repeats
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/predict_heatmaps.py --repeats 5 --baseline HEAD
    .venv/bin/python benchmarks/predict_heatmaps.py --smoke --output /tmp/heatmaps   # once, no baseline

Data (under ``benchmarks/_work/predict_heatmaps``, ignored by git): the synthetic ``coffee`` category
(40 normal training images, 100 test images of 256 px: 50 normal, 50 with defects), PaDiM fitted at its
default settings. ``anomalens predict`` (``workflow.predict_images``, the function behind the command) is
timed in a fresh process per measurement (``harness.run_job``), after the imports and the model load, over
the test images with ``--heatmaps all`` (every image gets an annotated heatmap) and ``--heatmaps none``
(the model alone), for three versions of the code, interleaved so a change of machine load hits all alike:

- ``baseline``: the code of ``--baseline`` (default HEAD), a git worktree (``harness.checkout``) imported
  with PYTHONPATH, with a run fitted by that code;
- ``no_annotation``: this working tree with ``anomalens.report.annotate_heatmap`` replaced by the identity
  (the heatmap exactly as before), so the difference to ``current`` is the annotation alone;
- ``current``: this working tree.

Also the drawing itself, in process (end-to-end times on a shared 2-core machine vary by more than the
annotation costs): ``annotate_heatmap`` on a 256² and a 2048² overlay (mean of 50 / 10), and a heatmap
writer's work per test image (overlay, PNG encoding) with and without the annotation.
Results: ``results/predict_heatmaps/results.{json,md}`` with the machine and its load average.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from harness import RESULTS, ROOT, Results, Run, WORK, checkout, describe, describe_run, machine, markdown, run_job
from harness import short_commit, table
from harness.cli import output_options, rebuild_report, refuse_smoke_into

SUITE = "predict_heatmaps"
OUTPUT = RESULTS / "predict_heatmaps"
HERE_WORK = WORK / "predict_heatmaps"
DATA = "synthetic coffee, 100 test images of 256 px (50 normal, 50 defective); PaDiM default settings"

_WORKER = r"""
import json, sys, time
from pathlib import Path
spec = json.loads(sys.argv[1])
import anomalens.report
from anomalens.workflow import predict_images
if spec["patch_out_annotation"]:
    anomalens.report.annotate_heatmap = lambda overlay, **caption: overlay
images = sorted(str(p) for p in Path(spec["images"]).rglob("*.png"))
out = Path(spec["out"])
start = time.perf_counter()
rows = predict_images(spec["run"], images, out, device="cpu", overwrite=True, heatmaps=spec["mode"], progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "images": len(rows),
                  "heatmaps": sum(1 for r in rows if r.get("heatmap"))}))
"""


def _threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", "2"))


def prepare(src: Path, run: Path) -> Path:
    """The category (built once) and a PaDiM run fitted by the code under ``src``."""
    category = HERE_WORK / "data" / "coffee"
    if not category.is_dir():
        run_job([sys.executable, "-c", (
            "from anomalens.data import make_synthetic_category as m; "
            f"m({str(HERE_WORK / 'data')!r}, source='coffee', n_train=40, n_test_good=50, n_test_defect=50, "
            "image_size=256, seed=0)")], threads=_threads())
    if not (run / "detector.json").is_file():
        shutil.rmtree(run, ignore_errors=True)
        run_job([sys.executable, "-c", "import sys; from anomalens.cli import main; sys.exit(main())",
                 "fit", "padim", str(category), "-o", str(run), "-q", "--device", "cpu"], src=src, threads=_threads())
    return category


def measure(src: Path, run: Path, images: Path, mode: str, patch_out_annotation: bool) -> dict:
    spec = {"run": str(run), "images": str(images), "out": str(HERE_WORK / "out"), "mode": mode,
            "patch_out_annotation": patch_out_annotation}
    return run_job([sys.executable, "-c", _WORKER, json.dumps(spec)], src=src, threads=_threads()).json()


def drawing_cost(images: Path) -> dict[str, float]:
    """Milliseconds per call of annotate_heatmap on a 256² and a 2048² overlay, and per image of a heatmap
    writer's work (overlay, [annotation,] PNG encoding as predict writes it) on the test images with and
    without the annotation — in process, current code, median of 3 passes: the machine's load hits both."""
    import numpy as np
    from PIL import Image

    from anomalens.report import annotate_heatmap, render_heatmap

    out = {}
    pictures = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(images.rglob("*.png"))]
    rng = np.random.default_rng(0)
    maps = [rng.random((64, 64)).astype(np.float32) for _ in pictures]
    caption = dict(score=3.21, normalized_score=0.87, threshold=2.5, anomalous=True)
    for annotated in (False, True):
        passes = []
        for _ in range(3):
            start = time.perf_counter()
            for picture, amap in zip(pictures, maps):
                overlay, _ = render_heatmap(picture, amap, 0.0, 1.0, 0.5)
                if annotated:
                    overlay = annotate_heatmap(overlay, vmin=0.0, vmax=1.0, pixel_threshold=0.5, **caption)
                Image.fromarray(overlay).save(io.BytesIO(), format="PNG", compress_level=1)
            passes.append((time.perf_counter() - start) / len(pictures) * 1000)
        out[f"writer_{'with' if annotated else 'without'}_annotation_ms_per_image"] = round(statistics.median(passes), 2)
    for size, calls in ((256, 50), (2048, 10)):
        overlay = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        kwargs = dict(score=3.21, normalized_score=0.87, threshold=2.5, anomalous=True, vmin=0.0, vmax=5.0,
                      pixel_threshold=2.5)
        annotate_heatmap(overlay, **kwargs)  # warm-up
        start = time.perf_counter()
        for _ in range(calls):
            annotate_heatmap(overlay, **kwargs)
        out[f"annotate_{size}px_ms"] = round((time.perf_counter() - start) / calls * 1000, 2)
    return out


def legacy(data: dict) -> Results:
    """results.json as written before the harness: {"machine", "baseline_commit", "data", "predict", "drawing"}."""
    m = dict(data["machine"])
    run = {"load_average_before": m.pop("load_average_before"), "load_average_after": m.pop("load_average_after")}
    m["omp_num_threads"] = m.pop("omp_threads")
    m.pop("gpu", None)
    rows = [{"code": key.split("/")[0], "mode": key.split("/")[1], **row} for key, row in data["predict"].items()]
    return Results(SUITE, rows=rows, machine=m, settings={"baseline": data["baseline_commit"]}, runs=[run],
                   sections={"data": data["data"], "drawing": data["drawing"]})


COLUMNS = [("code", "code"), ("heatmaps", "mode"), ("images/s", "images_per_second", None),
           ("median s", "median_seconds", None), ("runs (s)", lambda r: ", ".join(str(x) for x in r["all_seconds"]))]


def report(results: Results) -> str:
    baseline = results.settings.get("baseline")
    repeats = len(results.rows[0]["all_seconds"]) if results.rows else 0
    return markdown(
        "Annotated predict heatmaps: cost",
        [f"Machine: {describe(results.machine, load=False)}, shared with other jobs; {describe_run(results.runs[-1])}.",
         f"Data: {results.sections['data']}. `predict_images` in a fresh process per run, after imports and model load; "
         f"median of {repeats}. Baseline: " + (f"`{baseline[:10]}`." if baseline else "none (--no-baseline).")],
        table(results.rows, COLUMNS),
        "Drawing alone, in process (current code, ms): "
        + ", ".join(f"{k} = {v}" for k, v in results.sections["drawing"].items()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision of the code before the change")
    parser.add_argument("--no-baseline", action="store_true", help="measure the working tree only")
    parser.add_argument("--repeats", type=int, default=3)
    output_options(parser, OUTPUT, smoke="one repeat, no baseline")
    args = parser.parse_args()
    refuse_smoke_into(parser, args, OUTPUT)
    if args.report_only:
        rebuild_report(args.output / "results.json", args.output / "results.md", SUITE, report, legacy)
        return
    if args.smoke:
        args.repeats, args.no_baseline = 1, True

    HERE_WORK.mkdir(parents=True, exist_ok=True)
    current_src = ROOT / "src"
    category = prepare(current_src, HERE_WORK / "run-current")
    images = category / "test"
    versions = {}
    commit = None
    if not args.no_baseline:
        commit = short_commit(args.baseline)
        baseline_src = checkout(args.baseline) / "src"
        versions["baseline"] = (baseline_src, HERE_WORK / f"run-baseline-{commit}", False)
        prepare(baseline_src, versions["baseline"][1])
    versions["no_annotation"] = (current_src, HERE_WORK / "run-current", True)
    versions["current"] = (current_src, HERE_WORK / "run-current", False)
    run = Run()
    seconds: dict[str, list[float]] = {f"{v}/{m}": [] for v in versions for m in ("all", "none")}
    counts: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for mode in ("all", "none"):
            for version, (src, fitted, patch) in versions.items():
                result = measure(src, fitted, images, mode, patch)
                seconds[f"{version}/{mode}"].append(result["seconds"])
                counts[f"{version}/{mode}"] = {"images": result["images"], "heatmaps": result["heatmaps"]}
                print(f"[{repeat + 1}/{args.repeats}] {version:>13} heatmaps={mode}: {result['seconds']:.2f} s "
                      f"({result['images']} images, {result['heatmaps']} heatmaps)", flush=True)
    entry = run.record(repeats=args.repeats)
    rows = [{"code": key.split("/")[0], "mode": key.split("/")[1], **counts[key],
             "median_seconds": round(statistics.median(v), 3),
             "images_per_second": round(counts[key]["images"] / statistics.median(v), 1),
             "all_seconds": [round(x, 3) for x in v]} for key, v in seconds.items()]
    results = Results(SUITE, rows=rows, machine=machine("cpu"), settings={"baseline": commit, "repeats": args.repeats},
                      runs=[entry], sections={"data": DATA, "drawing": drawing_cost(images)})
    text = report(results)
    results.write(args.output / "results", text)
    print(text)


if __name__ == "__main__":
    main()
