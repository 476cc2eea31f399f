"""Precision suite: fp32 vs fp16 vs INT8 exports per detector and runtime — file size, CPU throughput, latency,
and what the precision costs in accuracy (AUROC vs fp32, score differences, label flips).

    .venv/bin/python benchmarks/export_precision.py                  # writes results/export_precision/
    .venv/bin/python benchmarks/export_precision.py --models padim --reuse
    .venv/bin/python benchmarks/export_precision.py --smoke --output /tmp/precision   # PaDiM, 64 px

On the synthetic brick category of the harness (``harness.datasets``: 120 training images, 70 test images,
256 px), each detector is fitted once (trained ones: ``--epochs`` only — the precisions are compared against
their own fp32, not against a good model), then exported as ONNX fp32 / int8 and OpenVINO fp32 / fp16 / int8
(int8 calibrated on the run's training normals, as ``anomalens export --precision int8`` does). All variants of
a detector are measured in this process in interleaved rounds (fp32, fp16, int8, fp32, ...; best of
``--repeats``), on the same preprocessed float32 test images: throughput in batches of 8, single-image latency
p50 / p95. Accuracy is against the same runtime's fp32: image AUROC change, max / mean |score difference|,
labels flipped under the run's decision rule. The load average is recorded with the machine.

Where the time goes (``--profile``, also run after a full measurement): OpenVINO's per-operation counters on
the fp32 and int8 graphs of every detector, the operations split into the networks' convolutions (what INT8
quantises: ``anomalens.quantization.is_layer``) and the rest. With a share c of the fp32 time in those
convolutions, no INT8 graph can run faster than 1 / (1 − c) times fp32 (Amdahl's bound, convolutions at zero
cost); the INT8 graph's own counters show how much faster its convolutions became and what the quantisation
added (FakeQuantize, re-layouts). This is the measured explanation behind ``anomalens.quantization.INT8_REFUSALS``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from harness import RESULTS, WORK, Results, describe, machine, markdown, table
from harness.cli import output_options, rebuild_report, refuse_smoke_into
from harness.datasets import synthetic_category

SUITE = "export_precision"
OUTPUT = RESULTS / SUITE
VARIANTS = [("onnxruntime", "onnx", "fp32"), ("onnxruntime", "onnx", "int8"), ("openvino", "openvino", "fp32"),
            ("openvino", "openvino", "fp16"), ("openvino", "openvino", "int8")]
SMOKE = {"models": ["padim"], "repeats": 1, "latency_runs": 3}
TARGET = "INT8 ≥ 1.5× the fp32 throughput, |AUROC change| ≤ 0.005, ≤ 1 % of labels flipped"

COLUMNS = [
    ("model", "model"), ("runtime", "runtime"), ("precision", "precision"), ("file MB", "file_mb", 1),
    ("images/s", "images_per_second", 2), ("× fp32", "speedup", 2), ("latency p50 ms", "latency_p50_ms", 0),
    ("latency p95 ms", "latency_p95_ms", 0), ("AUROC", "auroc", 4), ("AUROC − fp32", "auroc_change", 4),
    ("max Δscore (rel)", "max_rel_score_diff", 3), ("mean Δscore (rel)", "mean_rel_score_diff", 3),
    ("label flips", "label_flips", 0),
    ("int8 target met", lambda r: "refused: " + r["refused"] if "refused" in r else {True: "yes", False: "no"}.get(r.get("target_met"), "")),
]


PROFILE_COLUMNS = [
    ("model", "model"), ("precision", "precision"), ("ms per batch of 8", "total_ms", 1),
    ("network convolutions ms", "conv_ms", 1), ("rest ms", "rest_ms", 1), ("convolution share", "conv_share", 2),
    ("largest three of the rest", "top_rest"),
    ("INT8 bound × fp32", lambda r: f"{1 / (1 - r['conv_share']):.2f}" if r["precision"] == "fp32" else ""),
]


def where_the_time_goes(folder, images: np.ndarray, threads: int, runs: int = 5) -> dict:
    """OpenVINO's per-operation counters over ``runs`` inferences of one batch: the networks' convolutions
    (``is_layer``) against the rest, in ms per batch, and the rest's three largest operation types."""
    import collections

    import openvino as ov

    from anomalens.quantization import is_layer

    core = ov.Core()
    model = core.read_model(str(folder / "model.xml"))
    # float32 arithmetic, as anomalens' OpenVINO runtime asks for: left to itself the CPU plugin runs the fp32
    # graph's convolutions in bfloat16 on CPUs that have it, which is not what the throughput table measured
    compiled = core.compile_model(model, "CPU", {"PERF_COUNT": "YES", "INFERENCE_NUM_THREADS": threads,
                                                 "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    request.infer({0: images})  # warm-up: the first call compiles kernels
    times: collections.Counter = collections.Counter()
    for _ in range(runs):
        request.infer({0: images})
        for op in request.profiling_info:
            conv = op.node_type in ("Convolution", "GroupConvolution") and is_layer(op.node_name)
            times["network convolutions" if conv else op.node_type] += op.real_time.total_seconds() * 1000 / runs
    conv_ms = times.pop("network convolutions", 0.0)
    rest_ms = sum(times.values())
    return {"total_ms": conv_ms + rest_ms, "conv_ms": conv_ms, "rest_ms": rest_ms,
            "conv_share": conv_ms / (conv_ms + rest_ms),
            "top_rest": ", ".join(f"{kind} {ms:.1f}" for kind, ms in times.most_common(3))}


def profile(args, work, images_of: dict) -> list[dict]:
    """``where_the_time_goes`` of every detector's OpenVINO fp32 and int8 exports in ``work``."""
    rows = []
    for name in args.models:
        for precision in ("fp32", "int8"):
            folder = work / "exports" / f"{name}-openvino-{precision}"
            if (folder / "model.xml").is_file() and name in images_of:
                rows.append({"model": name, "precision": precision,
                             **where_the_time_goes(folder, images_of[name][:8], args.threads)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def report(results: Results) -> str:
    s = results.settings
    profiled = results.sections.get("profile")
    return markdown(
        "Export precisions: fp32 vs fp16 vs INT8 (CPU)",
        [f"Machine: {describe(results.machine)}; {s['threads']} threads per runtime; shared machine: other jobs ran "
         "at the same time (load average above), so compare rows of one model, measured interleaved in one run.",
         f"Data: {results.sections['category']}, {results.sections['n_test_images']} test images; throughput in "
         f"batches of 8 (best of {s['repeats']} interleaved rounds), latency of one image (p50 / p95 of "
         f"{s['latency_runs']}); accuracy against the same runtime's fp32 export; relative score differences "
         f"are to the largest fp32 score. Target: {TARGET}. Detectors measured: {', '.join(s['models'])}; a refused "
         "row is an export that `anomalens export` itself refused, with its one line."],
        table(results.rows, COLUMNS),
        profiled and ["## Where the time goes (OpenVINO's per-operation counters)", "",
                      "One batch of 8 test images, the mean of 5 inferences; ‘network convolutions’ are what INT8 "
                      "quantises, the rest stays float32 (distances, nearest-neighbour search, upsampling, blur). "
                      "‘INT8 bound’ = 1 / (1 − convolution share): the speed-up an INT8 graph could not exceed even "
                      "with free convolutions. Counters add their own overhead, so the totals are above the "
                      "throughput table's."
                      + (f" Profiled on: {results.sections['profile_machine']}." if "profile_machine" in results.sections
                         else "")],
        profiled and table(profiled, PROFILE_COLUMNS),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["padim", "patchcore", "stpm", "mvtec_cae"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the detectors that train")
    parser.add_argument("--reuse", action="store_true", help="reuse the runs and exports of an earlier invocation")
    parser.add_argument("--profile", action="store_true",
                        help="only add 'where the time goes' to the results, from an earlier invocation's exports")
    output_options(parser, OUTPUT, smoke="PaDiM at 64 px on a small category")
    args = parser.parse_args()
    refuse_smoke_into(parser, args, OUTPUT)
    if args.report_only:
        rebuild_report(args.output / "results.json", args.output / "results.md", SUITE, report)
        return
    work = WORK / SUITE
    if args.smoke:
        vars(args).update(SMOKE)
        work = WORK / f"{SUITE}-smoke"

    import torch

    from anomalens.data import load_mvtec_category, make_synthetic_category
    from anomalens.errors import AnomalensError
    from anomalens.export import export_run
    from anomalens.exported import load_export
    from anomalens.metrics import image_auroc
    from anomalens.workflow.fit import fit_run

    torch.set_num_threads(args.threads)
    if args.smoke:
        category = make_synthetic_category(work / "data", source="brick", n_train=12, n_test_good=6, n_test_defect=6,
                                           image_size=64, seed=0, overwrite=True)
    else:
        category = synthetic_category("brick")
    data = load_mvtec_category(category)
    labels = np.array([r.label for r in data.test])
    if args.profile:
        results = Results.load(args.output / "results.json", SUITE)
        images_of = {}
        for name in args.models:
            folder = work / "exports" / f"{name}-openvino-fp32"
            if (folder / "export.json").is_file():
                first = load_export(folder, "openvino", threads=args.threads)
                images_of[name] = np.stack([first.load(r) for r in data.test[:8]])
        results.sections["profile"] = profile(args, work, images_of)
        results.sections["profile_machine"] = describe(machine("cpu"))
        results.write(args.output / "results", report(results))
        return
    rows = []
    images_of: dict = {}
    for name in args.models:
        params = {"device": "cpu", **({"image_size": 64} if args.smoke else {})}
        if name in ("stpm", "mvtec_cae"):
            params["epochs"] = args.epochs
        run = work / "runs" / name
        if not (args.reuse and (run / "detector.json").is_file()):
            fit_run(name, category, run, params=params, overwrite=True, progress=False)
        models = {}
        for runtime, fmt, precision in VARIANTS:
            folder = work / "exports" / f"{name}-{fmt}-{precision}"
            if not (args.reuse and (folder / "export.json").is_file()):
                try:
                    export_run(run, folder, format=fmt, precision=precision, overwrite=True, progress=False)
                except AnomalensError as exc:  # a refusal is a result: its one line says what was measured
                    rows.append({"model": name, "runtime": runtime, "precision": precision, "refused": str(exc)})
                    print(json.dumps(rows[-1]), flush=True)
                    continue
            models[runtime, precision] = (folder, load_export(folder, runtime, threads=args.threads))
        first = next(iter(models.values()))[1]
        images = np.stack([first.load(r) for r in data.test])
        images_of[name] = images
        batches = [images[i : i + 8] for i in range(0, len(images), 8)]
        best = {key: float("inf") for key in models}
        latencies: dict = {key: [] for key in models}
        for _ in range(args.repeats):  # interleaved: every variant once per round
            for key, (_, model) in models.items():
                start = time.perf_counter()
                for batch in batches:
                    model.run(batch)
                best[key] = min(best[key], time.perf_counter() - start)
        for key, (_, model) in models.items():
            model.run(images[:1])
        for _ in range(args.latency_runs):
            for key, (_, model) in models.items():
                start = time.perf_counter()
                model.run(images[:1])
                latencies[key].append((time.perf_counter() - start) * 1000)
        for (runtime, precision), (folder, model) in models.items():
            scores = model.run(images)[0].astype(np.float64)
            ref_model = models[runtime, "fp32"][1]
            ref = ref_model.run(images)[0].astype(np.float64)
            scale = max(float(np.abs(ref).max()), 1e-12)
            flips = int(np.sum((scores > model.threshold_) != (ref > ref_model.threshold_)))
            speedup = best[runtime, "fp32"] / best[runtime, precision]
            auroc, auroc_ref = image_auroc(labels, scores), image_auroc(labels, ref)
            row = {"model": name, "runtime": runtime, "precision": precision,
                   "file_mb": sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith("model")) / 2**20,
                   "images_per_second": len(images) / best[runtime, precision], "speedup": speedup,
                   "latency_p50_ms": float(np.percentile(latencies[runtime, precision], 50)),
                   "latency_p95_ms": float(np.percentile(latencies[runtime, precision], 95)),
                   "auroc": auroc, "auroc_change": auroc - auroc_ref,
                   "max_rel_score_diff": float(np.abs(scores - ref).max()) / scale,
                   "mean_rel_score_diff": float(np.abs(scores - ref).mean()) / scale, "label_flips": flips,
                   "label_flip_fraction": flips / len(images)}
            if precision == "int8":
                row["target_met"] = bool(speedup >= 1.5 and abs(row["auroc_change"]) <= 0.005
                                         and row["label_flip_fraction"] <= 0.01)
            rows.append(row)
            print(json.dumps(row), flush=True)

    settings = {k: v for k, v in vars(args).items() if k not in ("output", "report_only", "smoke")}
    sections = {"category": f"synthetic brick ({category})", "n_test_images": len(data.test),
                "profile": profile(args, work, images_of)}
    results = Results(SUITE, rows=rows, machine=machine("cpu"), settings=settings, sections=sections)
    results.write(args.output / "results", report(results))
    print(report(results))


if __name__ == "__main__":
    main()
