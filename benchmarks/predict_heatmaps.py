"""What burning the score strip and colour bar into ``anomalens predict``'s heatmaps costs (issue 16, item 4).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/predict_heatmaps.py            # 100 images, 3 repeats
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/predict_heatmaps.py --n 200 --repeats 5 --baseline HEAD

Data (under ``benchmarks/_work/predict_heatmaps``, ignored by git): the synthetic ``coffee`` category
(40 normal training images, 100 test images of 256 px: 50 normal, 50 with defects), PaDiM fitted at its
default settings. ``anomalens predict`` (``workflow.predict_images``, the function behind the command) is
timed in a fresh process per measurement, after the imports and the model load, over the test images with
``--heatmaps all`` (every image gets an annotated heatmap) and ``--heatmaps none`` (the model alone), for
three versions of the code, interleaved so a change of machine load hits all alike:

- ``baseline``: the committed code of ``--baseline`` (default HEAD), exported with ``git archive`` (read
  only) and imported with PYTHONPATH, with a run fitted by that code;
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
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work" / "predict_heatmaps"
RESULTS = HERE / "results" / "predict_heatmaps"

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


def _env(src: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
               HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    return env


def export_baseline(revision: str) -> tuple[str, Path]:
    """The committed ``src`` of ``revision`` under WORK (``git archive``: reads the repository, changes nothing)."""
    commit = subprocess.run(["git", "rev-parse", revision], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    target = WORK / f"baseline-{commit[:10]}"
    if not (target / "src" / "anomalens").is_dir():
        shutil.rmtree(target, ignore_errors=True)
        archive = subprocess.run(["git", "archive", "--format=tar", commit, "src"], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
    return commit, target / "src"


def prepare(src: Path, run: Path) -> Path:
    """The category (built once) and a PaDiM run fitted by the code under ``src``."""
    category = WORK / "data" / "coffee"
    if not category.is_dir():
        subprocess.run([sys.executable, "-c", (
            "from anomalens.data import make_synthetic_category as m; "
            f"m({str(WORK / 'data')!r}, source='coffee', n_train=40, n_test_good=50, n_test_defect=50, "
            "image_size=256, seed=0)")], env=_env(ROOT / "src"), check=True)
    if not (run / "detector.json").is_file():
        shutil.rmtree(run, ignore_errors=True)
        subprocess.run([sys.executable, "-c", "import sys; from anomalens.cli import main; sys.exit(main())",
                        "fit", "padim", str(category), "-o", str(run), "-q", "--device", "cpu"],
                       env=_env(src), check=True)
    return category


def measure(src: Path, run: Path, images: Path, mode: str, patch_out_annotation: bool) -> dict:
    spec = {"run": str(run), "images": str(images), "out": str(WORK / "out"), "mode": mode,
            "patch_out_annotation": patch_out_annotation}
    done = subprocess.run([sys.executable, "-c", _WORKER, json.dumps(spec)], env=_env(src), check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def drawing_cost(images: Path) -> dict[str, float]:
    """Milliseconds per call of annotate_heatmap on a 256² and a 2048² overlay, and per image of a heatmap
    writer's work (overlay, [annotation,] PNG encoding as predict writes it) on the test images with and
    without the annotation — in process, current code, median of 3 passes: the machine's load hits both."""
    sys.path.insert(0, str(ROOT / "src"))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision of the code before the change")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    commit, baseline_src = export_baseline(args.baseline)
    current_src = ROOT / "src"
    category = prepare(current_src, WORK / "run-current")
    prepare(baseline_src, WORK / f"run-baseline-{commit[:10]}")
    images = category / "test"
    versions = {
        "baseline": (baseline_src, WORK / f"run-baseline-{commit[:10]}", False),
        "no_annotation": (current_src, WORK / "run-current", True),
        "current": (current_src, WORK / "run-current", False),
    }
    load_before = os.getloadavg()
    seconds: dict[str, list[float]] = {f"{v}/{m}": [] for v in versions for m in ("all", "none")}
    counts: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for mode in ("all", "none"):
            for version, (src, run, patch) in versions.items():
                result = measure(src, run, images, mode, patch)
                seconds[f"{version}/{mode}"].append(result["seconds"])
                counts[f"{version}/{mode}"] = {"images": result["images"], "heatmaps": result["heatmaps"]}
                print(f"[{repeat + 1}/{args.repeats}] {version:>13} heatmaps={mode}: {result['seconds']:.2f} s "
                      f"({result['images']} images, {result['heatmaps']} heatmaps)", flush=True)
    load_after = os.getloadavg()
    rows = {key: {**counts[key], "median_seconds": round(statistics.median(v), 3),
                  "images_per_second": round(counts[key]["images"] / statistics.median(v), 1),
                  "all_seconds": [round(x, 3) for x in v]} for key, v in seconds.items()}
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "omp_threads": os.environ.get("OMP_NUM_THREADS"), "gpu": "none",
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in load_after],
                    "note": "2 cores shared with other engineers' jobs"},
        "baseline_commit": commit,
        "data": "synthetic coffee, 100 test images of 256 px (50 normal, 50 defective); PaDiM default settings",
        "predict": rows,
        "drawing": drawing_cost(images),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Annotated predict heatmaps: cost", "",
        f"Machine: {result['machine']['cores']} cores (shared with other jobs), no GPU, OMP_NUM_THREADS="
        f"{result['machine']['omp_threads']}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after.",
        f"Data: {result['data']}. `predict_images` in a fresh process per run, after imports and model load; "
        f"median of {args.repeats}. Baseline: `{commit[:10]}`.", "",
        "| code | heatmaps | images/s | median s | runs (s) |", "|---|---|---|---|---|",
    ]
    for key, row in rows.items():
        version, mode = key.split("/")
        lines.append(f"| {version} | {mode} | {row['images_per_second']} | {row['median_seconds']} | "
                     f"{', '.join(str(x) for x in row['all_seconds'])} |")
    lines += ["", "Drawing alone, in process (current code, ms): "
              + ", ".join(f"{k} = {v}" for k, v in result["drawing"].items()), ""]
    (RESULTS / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
