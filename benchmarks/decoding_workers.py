"""Decoding workers suite: does decoding in worker processes (the default, ``min(8, cores − 1)``) or in the main
process (``ANOMALENS_WORKERS=0``) give the higher ``detector.predict`` throughput on this machine's CPU?

    .venv/bin/python benchmarks/decoding_workers.py          # writes results/decoding_workers/
    .venv/bin/python benchmarks/decoding_workers.py --report-only

Each detector (the 1-epoch DRAEM of the anomalib comparison's widths, PaDiM, PatchCore at a 1 % coreset) is fitted
on 30 training images of the synthetic brick category, then predicts 40 of its test images as stored (256 px PNG),
enlarged to 1024² PNG and to 2048² JPEG (quality 92), with 1 worker process and with 0, alternately, ``--rounds``
times; the best round of each is reported. Scores do not depend on the workers (tests/test_throughput_paths.py).
"""

from __future__ import annotations

import argparse
import os
import time

from harness import RESULTS, WORK, Results, describe, machine, markdown, table
from harness.cli import output_options, rebuild_report
from harness.datasets import synthetic_category

SUITE = "decoding_workers"
OUTPUT = RESULTS / SUITE
DETECTORS = ("draem", "padim", "patchcore")
FORMATS = (("256 px PNG (as stored)", None, None), ("1024² PNG", 1024, "png"), ("2048² JPEG", 2048, "jpg"))
N_IMAGES = 40


def detector_params(name: str) -> dict:
    if name == "draem":
        from compare_models import draem  # the script's folder is first on sys.path

        return draem.anomalens_params(1, 256, "cpu")
    return {"device": "cpu", **({"coreset_fraction": 0.01} if name == "patchcore" else {})}


def image_files(records, side: int | None, extension: str | None) -> list:
    """The test images as stored, or enlarged copies of them (written once under benchmarks/_work)."""
    if side is None:
        return [r.source for r in records]
    from PIL import Image

    folder = WORK / SUITE / f"{side}-{extension}"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, record in enumerate(records):
        path = folder / f"{i:03d}.{extension}"
        if not path.exists():
            image = Image.open(record.source).convert("RGB").resize((side, side), Image.BICUBIC)
            image.save(path, **({"quality": 92} if extension == "jpg" else {}))
        files.append(path)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--copies", type=int, default=1,
                        help="predict the 40 images this many times over in one call (a long run: the workers' "
                             "start-up amortised); rows merge by detector, images and copies")
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=DETECTORS)
    parser.add_argument("--threads", type=int, default=2)
    output_options(parser, OUTPUT)
    args = parser.parse_args()
    if args.report_only:
        rebuild_report(args.output / "results.json", args.output / "results.md", SUITE, report)
        return
    import torch

    import anomalens
    from anomalens.data import ImageRecord, default_workers, load_dataset

    torch.set_num_threads(args.threads)
    data = load_dataset(synthetic_category("brick"))
    default = default_workers()
    rows = []
    for name in args.detectors:
        detector = anomalens.create_detector(name, **detector_params(name)).fit(data.train[:30], progress=False)
        for label, side, extension in FORMATS:
            files = image_files(data.test[:N_IMAGES], side, extension)
            records = [ImageRecord(f, 0, None, str(f)) for f in files] * args.copies
            best = {}
            for _ in range(args.rounds):
                for workers in (default, 0):
                    os.environ["ANOMALENS_WORKERS"] = str(workers)
                    start = time.perf_counter()
                    detector.predict(records, progress=False)
                    best[workers] = min(best.get(workers, float("inf")), time.perf_counter() - start)
            os.environ.pop("ANOMALENS_WORKERS")
            rows.append({"detector": name, "images": label, "copies": args.copies, "rounds": args.rounds,
                         "default_workers": default,
                         "images_per_second_default": len(records) / best[default],
                         "images_per_second_in_process": len(records) / best[0],
                         "in_process_over_default": best[default] / best[0]})
            print(rows[-1], flush=True)
    path = args.output / "results.json"
    results = Results.load(path, SUITE)
    for row in results.rows:
        row.setdefault("copies", 1)  # rows written before --copies existed
    for row in rows:
        results.upsert(row, "detector", "images", "copies")
    results.machine = machine("cpu")
    results.settings = {"rounds": args.rounds, "threads": args.threads, "images": N_IMAGES}
    results.write(args.output / "results", report(results))
    print(report(results))


def report(results: Results) -> str:
    s = results.settings
    return markdown(
        "Decoding in worker processes or in the main process: detector.predict throughput (CPU)",
        [(f"Machine: {describe(results.machine)}; torch {s['threads']} threads. Generated by "
         "`benchmarks/decoding_workers.py` (its docstring says how). Best of "
         f"‘rounds’ alternating rounds, {s['images']} images each (× ‘copies’ in one call: a long run, where a "
         "worker's start-up is amortised); ‘default’ is `min(8, cores − 1)` workers.")],
        table(results.rows, [("detector", "detector"), ("images", "images"), ("copies", "copies", 0), ("rounds", "rounds", 0), ("default workers", "default_workers", 0),
                             ("images/s, default", "images_per_second_default", 1),
                             ("images/s, in process", "images_per_second_in_process", 1),
                             ("in process ÷ default", "in_process_over_default", 2)]),
    )


if __name__ == "__main__":
    main()
