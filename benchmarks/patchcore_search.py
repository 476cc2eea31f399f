"""Scale suite: PatchCore's exact vs approximate (HNSW, faiss) nearest-neighbour search, on the same memory bank.

    .venv/bin/python benchmarks/patchcore_search.py            # 120 and 900 training images of brick
    .venv/bin/python benchmarks/patchcore_search.py --report-only
    .venv/bin/python benchmarks/patchcore_search.py --smoke --output /tmp/search   # 120 images, 64 px

For each training-set size the detector is fitted once (exact search, the default; coreset 10 %, 256 px,
efficientnet_lite0), then the same bank is given an HNSW graph (what ``-p search=hnsw`` builds at fit
time) and the test images are scored both ways in this one process. Reported: graph build seconds, test
milliseconds per image for each search, recall@1 of the graph on every test patch (share of patches whose
nearest bank entry it finds), and image / pixel AUROC of both. Writes
benchmarks/results/patchcore_search/results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from harness import RESULTS, Results, describe, machine, markdown, table
from harness.cli import output_options, rebuild_report, refuse_smoke_into
from harness.datasets import synthetic_category

SUITE = "patchcore_search"
OUTPUT = RESULTS / "patchcore_search"
SIZES = (120, 900)  # the accuracy suite's brick, and the scaling runs' (compare_anomalib.py --scaling)


def _timed_predict(detector, records) -> tuple[object, float]:
    start = time.perf_counter()
    result = detector.predict(records, progress=False)
    return result, (time.perf_counter() - start) / len(records) * 1000


def measure(n_train: int, params: dict | None = None) -> dict:
    import torch

    from anomalens import create_detector
    from anomalens.data import iterate_batches, load_mvtec_category
    from anomalens.metrics import evaluate
    from anomalens.models.components.ann import HNSWIndex
    from anomalens.models.components.knn import nearest_neighbors
    from anomalens.workflow import ground_truth_masks

    data = load_mvtec_category(synthetic_category("brick", n_train))
    detector = create_detector("patchcore", device="cpu", **(params or {}))
    start = time.perf_counter()
    detector.fit(data.train, progress=False)
    fit_s = time.perf_counter() - start
    labels = [r.label for r in data.test]
    masks = ground_truth_masks(data.test, detector.input_size)
    row = {"n_train": n_train, "n_test": len(data.test), "bank_entries": int(detector.memory_bank_.shape[0]),
           "fit_seconds_exact": round(fit_s, 1), "torch_threads": torch.get_num_threads()}
    exact, ms_exact = _timed_predict(detector, data.test)
    start = time.perf_counter()
    detector.ann_index_ = HNSWIndex.build(detector.memory_bank_)
    row["hnsw_build_seconds"] = round(time.perf_counter() - start, 2)
    approx, ms_hnsw = _timed_predict(detector, data.test)
    row.update({"test_ms_per_image_exact": round(ms_exact, 1), "test_ms_per_image_hnsw": round(ms_hnsw, 1)})
    for name, result in (("exact", exact), ("hnsw", approx)):
        m = evaluate(labels, result.scores, detector.threshold_, masks=masks, maps=result.maps)
        row[f"image_auroc_{name}"], row[f"pixel_auroc_{name}"] = m["image_auroc"], m["pixel_auroc"]
    found = total = 0
    with torch.inference_mode():  # recall@1 over every test patch
        for batch in iterate_batches(data.test, detector.image_size, 32):
            emb = detector.embed(batch["image"]).reshape(-1, detector.memory_bank_.shape[1])
            true = nearest_neighbors(emb, detector.memory_bank_, 1)[1][:, 0]
            found += int((detector.ann_index_.search(emb)[1][:, 0] == true).sum())
            total += len(true)
    row["recall_at_1"] = round(found / total, 4)
    row["max_abs_score_difference"] = float(np.abs(approx.scores - exact.scores).max())
    row["load_average_1min"] = round(os.getloadavg()[0], 2)
    if params:
        row["params"] = params
    return row


def legacy(data: dict) -> Results:
    """results.json as written before the harness: {"machine": {... "date" ...}, "rows": [...]}."""
    return Results(SUITE, rows=data["rows"], machine=data["machine"], date=data["machine"].get("date", ""))


COLUMNS = [
    ("train images", "n_train"), ("bank entries", "bank_entries"), ("threads", "torch_threads"),
    ("graph build s", "hnsw_build_seconds", 1), ("test ms/img exact", "test_ms_per_image_exact", 0),
    ("test ms/img HNSW", "test_ms_per_image_hnsw", 0),
    ("speed-up", lambda r: f"{r['test_ms_per_image_exact'] / r['test_ms_per_image_hnsw']:.2f}×"),
    ("recall@1", "recall_at_1", 4),
    ("image AUROC exact / HNSW", lambda r: f"{r['image_auroc_exact']:.3f} / {r['image_auroc_hnsw']:.3f}"),
    ("pixel AUROC exact / HNSW", lambda r: f"{r['pixel_auroc_exact']:.4f} / {r['pixel_auroc_hnsw']:.4f}"),
    ("load", "load_average_1min", None),
]


def report(results: Results) -> str:
    return markdown(
        "PatchCore: exact vs HNSW nearest-neighbour search",
        "Generated by `benchmarks/patchcore_search.py`.",
        [f"Machine: {describe(results.machine)}; run {results.date}. One fit per row (coreset 10 %, 256 px, "
         "efficientnet_lite0, exact search), then the same bank scored with exact search and with an HNSW graph "
         "(M 32, efConstruction 40, efSearch 64, faiss) in the same process.",
         "Synthetic brick (120 images: `benchmarks/run.py`'s category; 900: `compare_anomalib.py --scaling`'s), "
         "70 test images (30 normal, 40 defective)."],
        table(results.rows, COLUMNS),
        "Test time includes image decoding and the backbone (the same for both searches); "
        "'load' is the 1-minute load average at the end of the row (above ~2: the 2 cores were shared).",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-sizes", type=int, nargs="+", default=list(SIZES), choices=SIZES)
    parser.add_argument("--threads", type=int, default=2)
    output_options(parser, OUTPUT, smoke="120 images at 64 px")
    args = parser.parse_args()
    refuse_smoke_into(parser, args, OUTPUT)
    if args.report_only:
        rebuild_report(args.output / "results.json", args.output / "results.md", SUITE, report, legacy)
        return
    import torch

    torch.set_num_threads(args.threads)
    params = {"image_size": 64} if args.smoke else None
    rows = [measure(n, params) for n in ([120] if args.smoke else args.train_sizes)]
    for r in rows:
        print(json.dumps(r), flush=True)
    results = Results(SUITE, rows=rows, machine=machine("cpu"), settings={"threads": args.threads, **(params or {})})
    results.write(args.output / "results", report(results))
    print(f"wrote {args.output / 'results.md'}")


if __name__ == "__main__":
    main()
