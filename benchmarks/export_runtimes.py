"""Speed suite: torch vs ONNX Runtime vs OpenVINO on this CPU — throughput, single-image latency, file sizes,
peak memory.

    .venv/bin/python benchmarks/export_runtimes.py               # writes results/export_runtimes/
    .venv/bin/python benchmarks/export_runtimes.py --models padim --n-test 8 --threads 2
    .venv/bin/python benchmarks/export_runtimes.py --smoke --output /tmp/export   # PaDiM, 64 px, a few images

For padim, patchcore and stpm at 256 px on a synthetic category (``make_synthetic_category``, brick):
fit (STPM: a few epochs only — speed, not accuracy, is measured here), export to ONNX and OpenVINO IR,
then, in this process, on the same preprocessed float32 batches:
- throughput: images per second over ``--n-test`` images in batches of 8 (best of ``--repeats``);
- latency of one image (batch 1): p50 and p95 over ``--latency-runs`` calls after 3 warm-up calls;
each runtime with ``--threads`` threads (torch.set_num_threads, ORT intra_op_num_threads, OpenVINO
INFERENCE_NUM_THREADS). The graph is the same module in all three (``Detector.inference_module``).
Then one fresh process per runtime (``harness.run_job``) runs a whole predict job on the test image *files*
(decode, resize, graph, decision rule); reported: its peak RSS and whether torch was imported.
``--reuse`` keeps the runs and exports of an earlier invocation (same settings) instead of refitting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from harness import RESULTS, WORK, Results, describe, machine, markdown, run_job, table
from harness.cli import output_options, rebuild_report, refuse_smoke_into

SUITE = "export_runtimes"
OUTPUT = RESULTS / "export_runtimes"
SMOKE = {"models": ["padim"], "image_size": 64, "n_train": 10, "n_test": 8, "repeats": 1, "latency_runs": 3}

PREDICT_SCRIPT = r"""
import json, sys, time
runtime, target, images = sys.argv[1], sys.argv[2], sys.argv[3:]
t = time.perf_counter()
if runtime == "torch":
    import torch
    torch.set_num_threads({threads})
    from anomalens.catalog import load_detector
    from anomalens.data import ImageRecord
    model = load_detector(target, device="cpu")
    result = model.predict([ImageRecord(p, 0) for p in images], progress=False)
else:
    from anomalens.exported import load_export
    model = load_export(target, runtime=runtime, threads={threads})
    result = model.predict(images)
print(json.dumps({{"seconds": time.perf_counter() - t, "torch_imported": "torch" in sys.modules, "n": len(result)}}))
"""


def timed(fn, batches, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            fn(batch)
        best = min(best, time.perf_counter() - start)
    return best


def latency(fn, image, runs):
    for _ in range(3):
        fn(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(image)
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50) * 1000), float(np.percentile(times, 95) * 1000)


def legacy(data: dict) -> Results:
    """results.json as written before the harness: {"meta": {"machine", "settings", "category"}, "rows"}."""
    meta = data["meta"]
    m = dict(meta["machine"])
    versions = {k: m.pop(k) for k in ("onnxruntime", "openvino")}
    m["cores"] = m.pop("logical_cpus")
    return Results(SUITE, rows=data["rows"], machine=m, settings=meta["settings"],
                   sections={"category": meta["category"], "versions": versions})


COLUMNS = [
    ("model", "model"), ("runtime", "runtime"), ("images/s", "images_per_second", 1),
    ("latency p50 ms", "latency_p50_ms", 1), ("latency p95 ms", "latency_p95_ms", 1),
    ("model file MB", "model_file_mb", 1), ("predict peak RSS MB", "predict_process_peak_rss_mb", 0),
    ("torch imported", lambda r: "yes" if r["torch_imported"] else "no"),
]


def report(results: Results) -> str:
    s, versions = results.settings, results.sections["versions"]
    n_test = results.sections.get("n_test_images")
    return markdown(
        "torch vs ONNX Runtime vs OpenVINO (CPU)",
        [f"Machine: {describe(results.machine)}; onnxruntime {versions['onnxruntime']}, openvino {versions['openvino']}; "
         f"{s['threads']} threads per runtime; shared machine: other jobs may run at the same time.",
         f"Data: synthetic brick category, {s['image_size']} px, {s['n_train']} training images, "
         + (f"{n_test} test images" if n_test else f"the test images (--n-test {s['n_test']}, or an earlier run's "
            "with --reuse)") + "; throughput in batches of 8 (best of "
         f"{s['repeats']}), latency of one image (p50 / p95 of {s['latency_runs']}); model file = weights.safetensors "
         "for torch, the export's graph files otherwise; peak RSS of a fresh process that loads the model and predicts "
         "on the test image files (decode, resize, graph, decision rule)."],
        table(results.rows, COLUMNS),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["padim", "patchcore", "stpm"])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--n-test", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--stpm-epochs", type=int, default=3)
    parser.add_argument("--reuse", action="store_true", help="reuse the runs and exports of an earlier invocation")
    output_options(parser, OUTPUT, smoke="PaDiM at 64 px on a few images")
    args = parser.parse_args()
    refuse_smoke_into(parser, args, OUTPUT)
    if args.report_only:
        rebuild_report(args.output / "results.json", args.output / "results.md", SUITE, report, legacy)
        return
    work = WORK / "export_runtimes"
    if args.smoke:
        vars(args).update(SMOKE)
        work = WORK / "export_runtimes-smoke"

    import onnxruntime
    import openvino
    import torch

    from anomalens.catalog import create_detector, load_detector
    from anomalens.data import load_dataset, make_synthetic_category
    from anomalens.export import export_run
    from anomalens.exported import load_export, load_input

    torch.set_num_threads(args.threads)
    work.mkdir(parents=True, exist_ok=True)
    category = work / "data" / "brick"
    if not (args.reuse and category.is_dir()):
        category = make_synthetic_category(work / "data", source="brick", n_train=args.n_train, n_test_good=args.n_test // 2,
                                           n_test_defect=args.n_test - args.n_test // 2, image_size=args.image_size, seed=0,
                                           overwrite=True)
    data = load_dataset(category)
    test_files = [str(r.source) for r in data.test]
    rows = []
    for name in args.models:
        params = {"image_size": args.image_size, "device": "cpu", "batch_size": 8}
        if name == "stpm":
            params["epochs"] = args.stpm_epochs
        run = work / "runs" / name
        exports = {fmt: work / "exports" / f"{name}_{fmt}" for fmt in ("onnx", "openvino")}
        if not (args.reuse and (run / "detector.json").is_file() and all((p / "export.json").is_file() for p in exports.values())):
            create_detector(name, **params).fit(data.train, progress=False).save(run)
            exports = {fmt: export_run(run, path, fmt, overwrite=True) for fmt, path in exports.items()}
        detector = load_detector(run, device="cpu")
        module = detector.inference_module().eval()
        images = np.stack([load_input(f, detector.input_size, detector.image_channels) for f in test_files])
        batches = [images[i : i + 8] for i in range(0, len(images), 8)]

        def torch_run(batch, module=module):
            with torch.inference_mode():
                return module(torch.from_numpy(batch))

        runners = {"torch": torch_run,
                   "onnxruntime": load_export(exports["onnx"], "onnxruntime", threads=args.threads).run,
                   "openvino": load_export(exports["openvino"], "openvino", threads=args.threads).run}
        sizes = {fmt: sum(p.stat().st_size for p in folder.iterdir() if p.name != "export.json") / 2**20
                 for fmt, folder in exports.items()}
        weights_mb = (run / "weights.safetensors").stat().st_size / 2**20
        for runtime, fn in runners.items():
            seconds = timed(fn, batches, args.repeats)
            p50, p95 = latency(fn, images[:1], args.latency_runs)
            script = PREDICT_SCRIPT.format(threads=args.threads)
            target = str(run if runtime == "torch" else exports["onnx" if runtime == "onnxruntime" else "openvino"])
            done = run_job([sys.executable, "-c", script, runtime, target, *test_files], threads=args.threads,
                           label=f"{name} predict with {runtime}")
            job = done.json()
            row = {"model": name, "runtime": runtime, "images_per_second": len(images) / seconds,
                   "latency_p50_ms": p50, "latency_p95_ms": p95,
                   "model_file_mb": weights_mb if runtime == "torch" else sizes["onnx" if runtime == "onnxruntime" else "openvino"],
                   "predict_process_peak_rss_mb": done.peak_rss_mb, "predict_process_seconds": job["seconds"],
                   "torch_imported": job["torch_imported"]}
            rows.append(row)
            print(json.dumps(row), flush=True)

    settings = {k: v for k, v in vars(args).items() if k not in ("output", "report_only", "smoke")}
    sections = {"category": "synthetic brick (make_synthetic_category)", "n_test_images": len(test_files),
                "versions": {"onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__}}
    results = Results(SUITE, rows=rows, machine=machine("cpu"), settings=settings, sections=sections)
    results.write(args.output / "results", report(results))
    print(report(results))


if __name__ == "__main__":
    main()
