"""Accuracy suite (issue 26): does RD++ (``reverse_distillation -p variant=rd++``) pay on our data?

    .venv/bin/python benchmarks/rd_plus.py                       # every job not yet in results.json
    .venv/bin/python benchmarks/rd_plus.py --jobs rd:brick:0 rd++:brick:0
    .venv/bin/python benchmarks/rd_plus.py --epochs 2 --jobs rd:brick:0 rd++:brick:0 --output /tmp/rd_plus
    .venv/bin/python benchmarks/rd_plus.py --report-only

RD (Deng & Li 2022) and RD++ (Tien et al. 2023: projection layers trained with the SSOT, reconstruction and
contrast losses on simplex-noise pseudo-anomalies) side by side, everything else the detector's defaults: the
bundled EfficientNet-Lite0 encoder (levels 1-3), 256 px, batch 16, Adam lr 0.005 (RD++'s projections 0.001), the CPU
default of 20 epochs unless ``--epochs`` says otherwise (the same for both), 108 of the 120 training images trained
on and 12 held out for the threshold and the kept epoch (the validation loss: L_KD, through the projections for
RD++). A job is ``VARIANT:CATEGORY:SEED``, run in a fresh process (``harness.run_job``) on one of the five synthetic
categories of the other suites (``harness.datasets``: 120 training, 30 + 40 test images, 256 px); the seed draws
the networks' initial weights, the batches, the hold-out and RD++'s noise. The plan: seed 0 of every pair, then
seeds 1 and 2: a difference one draw shows may be the seed's.

Scored as the comparison suites score: scikit-learn AUROC on the raw image scores and on all pixels of the maps
against the masks, and AUPRO (FPR ≤ 0.3, ``anomalens.pixel_metrics.aupro``). Everything is seeded, so the
accuracy does not depend on the machine's load; the fit seconds do: on a shared 2-core machine they are upper
bounds (the load average at each job's end is in its row). Results: ``results/rd_plus/results.{json,md}``; the
verdict, in NOTES.md there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from harness import RESULTS as ALL_RESULTS
from harness import Results, Run, describe, describe_run, machine, markdown, run_job, table, write_report
from harness.cli import output_options
from harness.datasets import SYNTHETIC, synthetic_category

SUITE = "rd_plus"
RESULTS = ALL_RESULTS / SUITE
VARIANTS = ("rd", "rd++")
SIZE = 256
EPOCHS = 20  # reverse_distillation's CPU default (the papers: 200 for RD, 10-300 per category for RD++)
PLAN = [f"{variant}:{category}:{seed}" for seed in (0, 1, 2) for category in SYNTHETIC for variant in VARIANTS]
TIMEOUT_S = 3600
METRICS = ("image_auroc", "pixel_auroc", "aupro", "fit_seconds")


def worker(variant: str, category: str, seed: int, epochs: int, threads: int) -> dict:
    """Fit reverse_distillation's VARIANT on CATEGORY's training images and score its test set, in this process."""
    import torch

    torch.set_num_threads(threads)
    from compare_anomalib import _aurocs, _masks, _records

    from anomalens import create_detector
    from anomalens.data import ImageRecord
    from anomalens.pixel_metrics import aupro

    train, test, labels, masks = _records(synthetic_category(category))
    params = {"image_size": SIZE, "epochs": epochs, "variant": variant, "seed": seed, "device": "cpu"}
    detector = create_detector("reverse_distillation", **params)
    start = time.perf_counter()
    detector.fit([ImageRecord(p, 0, None, p.name) for p in train], progress=False)
    fit_seconds = time.perf_counter() - start
    scores, maps = detector.score([ImageRecord(p, y, None, p.name) for p, y in zip(test, labels)], progress=False)
    masks = _masks(masks, SIZE)
    history = detector.history_
    return {**_aurocs(labels, scores, maps, masks), "aupro": float(aupro(masks, maps)), "params": params,
            "kept_epoch": detector.kept_epoch_, "loss_first": round(history["loss"][0], 4),
            "loss_last": round(history["loss"][-1], 4), "val_loss_kept": round(history["val_loss"][detector.kept_epoch_], 4),
            "fit_seconds": round(fit_seconds, 1)}


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.mean(values) if values else None


def report(results: Results, epochs: int) -> str:
    rows = [r for r in results.rows if r["epochs"] == epochs]
    side_by_side = []
    for category in SYNTHETIC:
        fits = {v: [r for r in rows if r["variant"] == v and r["category"] == category] for v in VARIANTS}
        seeds = sorted({r["seed"] for r in fits["rd"]} & {r["seed"] for r in fits["rd++"]})
        row = {"category": category, "seeds": len(seeds)}
        for key in METRICS:  # the means over the seeds both variants have; fit seconds: the least (upper bounds)
            for variant in VARIANTS:
                measured = [r for r in fits[variant] if r["seed"] in seeds]
                row[f"{variant} {key}"] = (min((r[key] for r in measured), default=None) if key == "fit_seconds"
                                           else _mean(measured, key))
            if seeds:
                row[f"delta {key}"] = row[f"rd++ {key}"] - row[f"rd {key}"]
        side_by_side.append(row)
    complete = [r for r in side_by_side if r["seeds"]]
    if len(complete) == len(SYNTHETIC):
        side_by_side.append({"category": "**mean**", "seeds": min(r["seeds"] for r in complete),
                             **{k: _mean(complete, k) for k in complete[0] if k not in ("category", "seeds")}})
    columns = [("category", "category"), ("seeds", "seeds", None)]
    for key, header in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO")):
        columns += [(f"{header} RD", f"rd {key}"), (f"RD++", f"rd++ {key}"),
                    ("Δ", lambda r, k=key: f"{r[f'delta {k}']:+.3f}" if f"delta {k}" in r else "–")]
    columns += [("least fit s RD", "rd fit_seconds", 0), ("RD++", "rd++ fit_seconds", 0)]
    every_job = table(sorted(rows, key=lambda r: (SYNTHETIC.index(r["category"]), r["variant"], r["seed"])), [
        ("job", "job"), ("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"), ("AUPRO", "aupro"),
        ("kept epoch", "kept_epoch", None), ("loss first → last", lambda r: f"{r['loss_first']:.3f} → {r['loss_last']:.3f}"),
        ("val loss (kept)", "val_loss_kept"), ("fit s", "fit_seconds", 1), ("threads", "threads", None),
        ("load", "load_average_1min", 1)])
    machines = [f"- {r.get('machine', '')}, {r.get('threads')} thread(s) per job; {r.get('jobs')} job(s); " + describe_run(r)
                for r in results.runs if isinstance(r, dict)]
    return markdown(
        "RD vs RD++ on the synthetic categories (issue 26)",
        ("Generated by `benchmarks/rd_plus.py` (do not edit by hand); what each number is, is in that script's "
         "docstring; the verdict, in NOTES.md."),
        "## Machine", machines,
        (f"## {epochs} epochs, 256 px, EfficientNet-Lite0: means over the seeds"),
        ("Δ = RD++ − RD, of the means over the seeds both variants were fitted with. Fit seconds were measured on "
         "a shared 2-core machine under `nice -n 19`: upper bounds, so the table shows the least over the seeds."),
        table(side_by_side, columns),
        "## Every job", every_job)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", nargs="+", default=PLAN, help="VARIANT:CATEGORY:SEED (default: the plan)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--threads", type=int, default=2)
    output_options(parser, RESULTS)
    args = parser.parse_args()
    path = Path(args.output) / "results.json"
    results = Results.load(path, SUITE)
    if not args.report_only:
        started, count = Run(), 0
        for job in args.jobs:
            variant, category, seed = job.split(":") if job.count(":") == 2 else (job, "", "")
            if variant not in VARIANTS or category not in SYNTHETIC or not seed.isdigit():
                parser.error(f"{job}: expected VARIANT:CATEGORY:SEED, VARIANT in {VARIANTS}, CATEGORY in {SYNTHETIC}")
            if results.find(job=job, epochs=args.epochs):
                continue  # resumable: a row once measured stays (everything is seeded)
            value = run_job(worker, variant, category, int(seed), args.epochs, args.threads, threads=args.threads,
                            timeout=TIMEOUT_S, label=job).value
            row = {"job": job, "variant": variant, "category": category, "seed": int(seed), "epochs": args.epochs, **value,
                   "threads": args.threads, "load_average_1min": round(os.getloadavg()[0], 2)}
            results = Results.load(path, SUITE)  # rows another invocation saved meanwhile
            results.upsert(row, "job", "epochs")
            count += 1
            print(f"[{SUITE}] {job}@{args.epochs}: image {row['image_auroc']:.3f} pixel {row['pixel_auroc']:.3f} "
                  f"AUPRO {row['aupro']:.3f} fit {row['fit_seconds']} s", flush=True)
            results.machine = machine()
            results.settings = {"image_size": SIZE, "backbone": "efficientnet_lite0 (bundled)"}
            entry = started.record(machine=describe(results.machine, load=False), threads=args.threads, jobs=count,
                                   started=started.started)  # rewritten after every job
            results.runs = [r for r in results.runs if not (isinstance(r, dict) and r.get("started") == started.started)]
            results.runs.append(entry)
            results.save(path)  # after every job: a stopped run keeps its rows
    print(f"[{SUITE}] wrote {write_report(Path(args.output) / 'results.md', report(results, args.epochs))}")


if __name__ == "__main__":
    main()
