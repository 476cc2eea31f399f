"""Latency suite: EfficientAD against PatchCore on this CPU, torch vs ONNX Runtime vs OpenVINO, equal image size.

    .venv/bin/python benchmarks/efficientad_latency.py                      # writes results/compare_efficientad/latency.*
    .venv/bin/python benchmarks/efficientad_latency.py --image-size 128 --latency-runs 10
    .venv/bin/python benchmarks/efficientad_latency.py --smoke --output /tmp/latency

Both detectors are fitted on the same synthetic brick category (``make_synthetic_category``) — EfficientAD for
one epoch only: speed, not accuracy, is measured, and its graph costs the same whatever its weights — saved,
and exported with ``anomalens export`` (ONNX and OpenVINO IR). Then, in this one process, the six
(model, runtime) pairs run *interleaved*, round after round (A, B, C, … A, B, C, …), so that a busy phase
of the shared machine hits all of them: per round, the throughput over the test images in batches of 8 and
``--latency-runs`` single-image calls. Reported: images/s (median over rounds), latency p50 / p95 over all
single-image calls, the load average before and after. Then one fresh process per pair (``harness.run_job``)
runs the command users run, ``anomalens predict RUN_OR_EXPORT FILES --runtime R`` (decode, resize, graph,
decision rule, CSV): its wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from harness import RESULTS, WORK, Results, describe, machine, markdown, run_job, table
from harness.cli import output_options, rebuild_report, refuse_smoke_into

SUITE = "efficientad_latency"
OUTPUT = RESULTS / "compare_efficientad"
SMOKE = {"image_size": 64, "n_train": 8, "n_test": 8, "rounds": 1, "latency_runs": 3}
MODELS = ("efficientad", "patchcore")
RUNTIMES = ("torch", "onnxruntime", "openvino")

COLUMNS = [
    ("model", "model"), ("runtime", "runtime"), ("images/s", "images_per_second", 2),
    ("latency p50 ms", "latency_p50_ms", 1), ("latency p95 ms", "latency_p95_ms", 1),
    ("× PatchCore images/s", "vs_patchcore", 2),
    ("`anomalens predict` s", "predict_seconds", 1), ("predict peak RSS MB", "predict_peak_rss_mb", 0),
]


def _load_line(load: dict, threads: int) -> str:
    """The load average before and after, and whether other jobs shared the machine (1-min load > 1.5 × threads)."""
    before, after = load.get("before") or [], load.get("after") or []
    busiest = max([*before[:1], *after[:1], 0])
    shared = "a shared machine: other jobs ran at the same time" if busiest > 1.5 * threads else \
        "nothing else running (the jobs' own threads)"
    return (f"load average (1, 5, 15 min) before {[round(v, 2) for v in before]}, after {[round(v, 2) for v in after]}"
            f" — {shared}")


def report(results: Results) -> str:
    s = results.settings
    load = results.sections.get("load_average", {})
    return markdown(
        f"EfficientAD vs PatchCore latency on this CPU ({s['image_size']} px)",
        [f"Machine: {describe(results.machine, load=False)}; {s['threads']} threads per runtime; "
         f"{_load_line(load, s['threads'])}; the pairs ran interleaved, so that a busy phase hits all of them.",
         f"Data: synthetic brick, {s['image_size']} px, {s['n_train']} training images, {s['n_test']} test images. "
         f"EfficientAD: {s['efficientad']}; PatchCore: its defaults (efficientnet_lite0, layers 2-3). "
         f"Throughput in batches of 8 (median of {s['rounds']} rounds), latency of one image (p50 / p95 of "
         f"{s['rounds']} × {s['latency_runs']} calls), on preprocessed float32 tensors; `anomalens predict` = "
         "one fresh process running the command on the test files (startup, decode, resize, graph, CSV)."],
        table(results.rows, COLUMNS),
        [f"`anomalens predict` failed for {r['model']} / {r['runtime']}: {r['predict_error']}"
         for r in results.rows if r.get("predict_error")] or None,
    )


PART_COLUMNS = [("network", "network"), ("output channels", "channels"), ("ms per image p50", "ms_p50", 1),
                ("ms per image p95", "ms_p95", 1)]


def parts_report(results: Results) -> str:
    s, load = results.settings, results.sections.get("load_average", {})
    return markdown(
        f"EfficientAD's networks, one forward each on this CPU ({s['image_size']} px, batch 1, torch)",
        [f"Machine: {describe(results.machine, load=False)}; {s['threads']} threads; {_load_line(load, s['threads'])}. "
         f"Interleaved: {s['rounds']} rounds × {s['latency_runs']} calls per "
         "network. The two offline teachers: the default (EfficientNet-Lite0 levels 1-2 on the PDN grid, BatchNorm "
         "folded) and a PDN-S of the same 64 channels (what `anomalens distill-teacher` makes, the paper's kind)."],
        table(results.rows, PART_COLUMNS),
    )


def measure_parts(args: argparse.Namespace) -> None:
    """Forward time of each network at the image size, interleaved: where EfficientAD's time goes on a CPU,
    and what the teacher choice costs at inference."""
    import torch

    from anomalens.backbones import FeatureExtractor
    from anomalens.models.components.pdn import (
        BackboneTeacher,
        PatchAutoencoder,
        PatchDescriptionNetwork,
    )

    torch.set_num_threads(args.threads)
    size = (args.image_size, args.image_size)
    backbone = BackboneTeacher(FeatureExtractor("efficientnet_lite0", (1, 2)).optimize(size), size)
    channels = backbone.out_channels
    networks = {"teacher: efficientnet_lite0 levels 1-2 (default)": backbone,
                "teacher: PDN-S (distilled kind)": PatchDescriptionNetwork("small", channels),
                "student: PDN-S": PatchDescriptionNetwork("small", 2 * channels),
                "student: PDN-M": PatchDescriptionNetwork("medium", 2 * channels),
                "autoencoder": PatchAutoencoder(size, channels)}
    image = torch.rand(1, 3, *size)
    times: dict = {name: [] for name in networks}
    load_before = list(os.getloadavg())
    with torch.inference_mode():
        for net in networks.values():
            net.eval()(image)
        for _ in range(args.rounds):
            for name, net in networks.items():
                for _ in range(args.latency_runs):
                    start = time.perf_counter()
                    net(image)
                    times[name].append(time.perf_counter() - start)
    load_after = list(os.getloadavg())
    rows = [{"network": name, "channels": int(net(image).shape[1]) if name != "autoencoder" else channels,
             "ms_p50": float(np.percentile(np.array(times[name]) * 1000, 50)),
             "ms_p95": float(np.percentile(np.array(times[name]) * 1000, 95))} for name, net in networks.items()]
    settings = {k: v for k, v in vars(args).items() if k in ("image_size", "threads", "rounds", "latency_runs")}
    results = Results(f"{SUITE}_parts", rows=rows, machine=machine("cpu"), settings=settings,
                      sections={"load_average": {"before": load_before, "after": load_after}})
    results.write(args.output / "parts", parts_report(results))
    print(parts_report(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--n-train", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-runs", type=int, default=10)
    parser.add_argument("--teacher", default=None, help="efficientad's teacher (default: its own default)")
    parser.add_argument("--parts", action="store_true",
                        help="instead: the forward time of each network (the two offline teachers, student, autoencoder)")
    output_options(parser, OUTPUT, smoke="64 px, a few images, one round")
    args = parser.parse_args()
    refuse_smoke_into(parser, args, OUTPUT)
    if args.report_only:
        rebuild_report(args.output / "latency.json", args.output / "latency.md", SUITE, report)
        if (args.output / "parts.json").is_file():
            rebuild_report(args.output / "parts.json", args.output / "parts.md", f"{SUITE}_parts", parts_report)
        return
    if args.parts:
        measure_parts(args)
        return
    if args.smoke:
        vars(args).update(SMOKE)
    work = WORK / ("efficientad_latency-smoke" if args.smoke else "efficientad_latency")

    import torch

    from anomalens.catalog import create_detector, load_detector
    from anomalens.data import load_dataset, make_synthetic_category
    from anomalens.export import export_run
    from anomalens.exported import load_export, load_input

    torch.set_num_threads(args.threads)
    work.mkdir(parents=True, exist_ok=True)
    category = make_synthetic_category(work / "data", source="brick", n_train=args.n_train, n_test_good=args.n_test // 2,
                                       n_test_defect=args.n_test - args.n_test // 2, image_size=args.image_size, seed=0,
                                       overwrite=True)
    data = load_dataset(category)
    test_files = [str(r.source) for r in data.test]
    efficientad = {"epochs": 1, "batch_size": 8, **({"teacher": args.teacher} if args.teacher else {})}
    runners, targets = {}, {}
    for name in MODELS:
        params = {"image_size": args.image_size, "device": "cpu", "batch_size": 8}
        if name == "efficientad":
            params.update(efficientad)
        run = work / "runs" / name
        create_detector(name, **params).fit(data.train, progress=False).save(run)
        exports = {fmt: export_run(run, work / "exports" / f"{name}_{fmt}", fmt, overwrite=True, progress=False)
                   for fmt in ("onnx", "openvino")}
        detector = load_detector(run, device="cpu")
        module = detector.inference_module().eval()

        def torch_run(batch, module=module):
            with torch.inference_mode():
                return module(torch.from_numpy(batch))

        runners[name, "torch"] = torch_run
        runners[name, "onnxruntime"] = load_export(exports["onnx"], "onnxruntime", threads=args.threads).run
        runners[name, "openvino"] = load_export(exports["openvino"], "openvino", threads=args.threads).run
        targets[name] = {"torch": run, "onnxruntime": exports["onnx"], "openvino": exports["openvino"]}
        size, channels = detector.input_size, detector.image_channels
    images = np.stack([load_input(f, size, channels) for f in test_files])
    batches = [images[i: i + 8] for i in range(0, len(images), 8)]

    load_before = list(os.getloadavg())
    throughput: dict = {key: [] for key in runners}
    latencies: dict = {key: [] for key in runners}
    for key, fn in runners.items():  # warm-up
        fn(images[:1])
    for _ in range(args.rounds):
        for key, fn in runners.items():
            start = time.perf_counter()
            for batch in batches:
                fn(batch)
            throughput[key].append(len(images) / (time.perf_counter() - start))
            for _ in range(args.latency_runs):
                start = time.perf_counter()
                fn(images[:1])
                latencies[key].append(time.perf_counter() - start)
    load_after = list(os.getloadavg())

    rows = []
    for (name, runtime), fn in runners.items():
        ms = np.array(latencies[name, runtime]) * 1000
        out = work / "predict" / f"{name}_{runtime}"
        done = run_job([sys.executable, "-m", "anomalens.cli", "predict", str(targets[name][runtime]), *test_files,
                        "-o", str(out), "--overwrite", "--runtime", runtime, "--heatmaps", "none", "-q"],
                       threads=args.threads, check=False, label=f"{name} predict --runtime {runtime}")
        rows.append({"model": name, "runtime": runtime, "images_per_second": float(np.median(throughput[name, runtime])),
                     "latency_p50_ms": float(np.percentile(ms, 50)), "latency_p95_ms": float(np.percentile(ms, 95)),
                     "predict_seconds": done.seconds if done.ok else None,
                     "predict_peak_rss_mb": done.peak_rss_mb if done.ok else None,
                     "predict_error": None if done.ok else done.error_line()})
    for row in rows:
        patchcore = next(r for r in rows if r["model"] == "patchcore" and r["runtime"] == row["runtime"])
        row["vs_patchcore"] = row["images_per_second"] / patchcore["images_per_second"]
        print(json.dumps(row), flush=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("output", "report_only", "smoke")}
    settings["efficientad"] = ", ".join(f"{k}={v}" for k, v in efficientad.items())
    results = Results(SUITE, rows=rows, machine=machine("cpu"), settings=settings,
                      sections={"load_average": {"before": load_before, "after": load_after}, "n_test_images": len(test_files)})
    results.write(args.output / "latency", report(results))
    print(report(results))


if __name__ == "__main__":
    main()
