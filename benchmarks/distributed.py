"""Scale suite: beyond one machine (issue 18), measured on this one — Ray batch scoring with 1 and 2 workers against the
local ``predict``, and PaDiM / PatchCore fitted on Ray shards against the single-process fit.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/distributed.py            # ~3-6 min on 2 shared cores
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/distributed.py --quick    # a smoke run (into _work/distributed)

Data (under ``benchmarks/_work/distributed``, ignored by git): a synthetic ``brick`` category
(``make_synthetic_category``) at ``--size`` px, ``--n-train`` normal training images and ``--n-test`` test
images (half defective).

- **Scoring throughput**: images/s of ``predict_images`` (heatmaps none: the same outputs) and of
  ``predict_with_ray`` with 1 and 2 scoring actors on a local Ray cluster (started before the clock; each call
  includes starting its actors and loading the model in them, as a job on a running cluster does); the median
  of ``--repeats`` rounds, each round running the three in turn. Scores of every Ray run compared with the
  local ones.
- **PaDiM on shards** (2 shards): fit time; the largest differences of the Gaussians against the single fit
  (mean; covariance and its inverse, each relative to its largest entry) beside the same numbers for two
  single fits that differ only in batch size (the float noise of the method itself); thresholds; AUROC.
- **PatchCore on shards** (2 shards: per-shard coresets of 2·f, then the final f of their union): fit time,
  bank size, coverage radius (largest distance from any training patch feature to its nearest bank entry)
  and image AUROC, against the single fit.

Results: ``results/distributed.json`` and ``results/distributed.md`` (``--output`` names another stem), with
the machine and its load average before and after; ``--report-only`` rebuilds the markdown from the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from harness import RESULTS, Results, Run, describe, describe_run, machine, markdown, table, write_report
from harness import WORK as ALL_WORK

SUITE = "distributed"
OUTPUT = RESULTS / "distributed"
WORK = ALL_WORK / "distributed"
SMALL_JOB = 8  # images of the job whose time is the Ray engine's start-up (actors, model loads)


def prepare(n_train: int, n_test: int, size: int) -> Path:
    from anomalens.data import make_synthetic_category

    root = WORK / f"data-{n_train}-{n_test}-{size}"
    category = root / "brick"
    if not category.is_dir():
        shutil.rmtree(root, ignore_errors=True)
        make_synthetic_category(root, source="brick", n_train=n_train, n_test_good=n_test // 2,
                                n_test_defect=n_test - n_test // 2, image_size=size, seed=0)
    return category


def auroc(detector, test) -> float:
    from anomalens.metrics import evaluate

    scores = detector.predict(test, progress=False).scores
    return float(evaluate([r.label for r in test], scores, detector.threshold_)["image_auroc"])


def relative_gap(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| / max |b|."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def gaussians(detector) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, covariance, inverse covariance) per position, float64, from the fitted whitener W (WᵀW = Σ⁻¹)."""
    whitener = detector.whitener_.double()
    inverse = whitener.transpose(1, 2) @ whitener
    return detector.mean_.double().numpy(), torch.linalg.inv(inverse).numpy(), inverse.numpy()


def gaussian_gaps(a, b) -> dict[str, float]:
    return {name: relative_gap(x, y) for name, x, y in zip(("mean", "covariance", "inverse_covariance"),
                                                          gaussians(a), gaussians(b))}


def coverage_radius(detector, train, bank: torch.Tensor) -> float:
    """Largest distance from a training patch feature (``detector``'s embedding) to its nearest ``bank`` entry."""
    from anomalens.data import iterate_batches
    from anomalens.models.components.knn import nearest_neighbors

    worst = 0.0
    with torch.inference_mode():
        for batch in iterate_batches(train, detector.input_size, detector.batch_size):
            features = detector.embed(batch["image"]).reshape(-1, bank.shape[1])
            worst = max(worst, float(nearest_neighbors(features, bank, 1)[0].max()))
    return worst


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def bench_fits(category: Path, size: int, shards: int) -> dict:
    import ray

    from anomalens.catalog import create_detector
    from anomalens.data import load_dataset
    from anomalens.distributed import fit_sharded

    data = load_dataset(category)
    common = {"image_size": size, "device": "cpu", "batch_size": 16}
    out: dict = {}
    single, seconds = timed(create_detector("padim", **common).fit, data.train, progress=False)
    other_batch = create_detector("padim", **{**common, "batch_size": 8}).fit(data.train, progress=False)
    ray.init(address="local", num_cpus=shards, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    try:
        sharded = create_detector("padim", **common)
        _, sharded_seconds = timed(fit_sharded, sharded, data.train, shards=shards, progress=False)
        out["padim"] = {
            "single_fit_s": round(seconds, 2), "sharded_fit_s": round(sharded_seconds, 2), "shards": shards,
            "gap_sharded_vs_single": gaussian_gaps(sharded, single),
            "gap_batch8_vs_batch16_single": gaussian_gaps(other_batch, single),
            "threshold_single": single.threshold_, "threshold_sharded": sharded.threshold_,
            "auroc_single": auroc(single, data.test), "auroc_sharded": auroc(sharded, data.test),
            "max_score_gap_relative": relative_gap(sharded.predict(data.test, progress=False).scores,
                                                   single.predict(data.test, progress=False).scores),
        }
        del single, sharded, other_batch
        single, seconds = timed(create_detector("patchcore", **common).fit, data.train, progress=False)
        sharded = create_detector("patchcore", **common)
        _, sharded_seconds = timed(fit_sharded, sharded, data.train, shards=shards, progress=False)
        out["patchcore"] = {
            "single_fit_s": round(seconds, 2), "sharded_fit_s": round(sharded_seconds, 2), "shards": shards,
            "bank_single": int(single.memory_bank_.shape[0]), "bank_sharded": int(sharded.memory_bank_.shape[0]),
            "coverage_radius_single": coverage_radius(single, data.train, single.memory_bank_),
            "coverage_radius_sharded": coverage_radius(single, data.train, sharded.memory_bank_),
            "threshold_single": single.threshold_, "threshold_sharded": sharded.threshold_,
            "auroc_single": auroc(single, data.test), "auroc_sharded": auroc(sharded, data.test),
        }
    finally:
        ray.shutdown()
    return out


def bench_scoring(category: Path, size: int, repeats: int) -> dict:
    import ray

    from anomalens.catalog import create_detector
    from anomalens.data import load_dataset
    from anomalens.distributed import predict_with_ray
    from anomalens.workflow import predict_images

    run = WORK / f"run-padim-{size}"
    if not (run / "detector.json").is_file():
        shutil.rmtree(run, ignore_errors=True)
        create_detector("padim", image_size=size, device="cpu").fit(load_dataset(category).train, progress=False).save(run)
    images = sorted(p for sub in (category / "test").iterdir() for p in sub.iterdir())
    out_dir = WORK / "predictions"
    few = images[:: max(1, len(images) // SMALL_JOB)][:SMALL_JOB]
    seconds: dict[str, list[float]] = {"local": [], "local_1_thread": [], "ray_1": [], "ray_2": []}
    small: dict[str, list[float]] = {"ray_1": [], "ray_2": []}
    gaps: dict[str, float] = {}
    for _ in range(repeats):  # rounds of all four, so that a change of the machine's load hits them alike
        local_rows, took = timed(predict_images, run, images, out_dir / "local", device="cpu", overwrite=True,
                                 heatmaps="none", progress=False)
        seconds["local"].append(took)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as a Ray actor of one CPU runs: less exposed to other jobs on the cores
        try:
            seconds["local_1_thread"].append(timed(predict_images, run, images, out_dir / "local1", device="cpu",
                                                   overwrite=True, heatmaps="none", progress=False)[1])
        finally:
            torch.set_num_threads(threads)
        for workers in (1, 2):
            key = f"ray_{workers}"
            ray.init(address="local", num_cpus=workers + 1, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR")
            try:
                rows, took = timed(predict_with_ray, run, images, out_dir / key, workers=workers, overwrite=True,
                                   progress=False)
                small[key].append(timed(predict_with_ray, run, few, out_dir / f"{key}-small", workers=workers,
                                        overwrite=True, progress=False)[1])
            finally:
                ray.shutdown()
            seconds[key].append(took)
            gaps[key] = max(gaps.get(key, 0.0), relative_gap(np.array([r["score"] for r in rows]),
                                                             np.array([r["score"] for r in local_rows])))
    median = {k: float(np.median(v)) for k, v in seconds.items()}
    start_up = {k: float(np.median(v)) for k, v in small.items()}
    return {"images": len(images), "image_size": size, "small_job_images": len(few),
            "seconds_each_round": {k: [round(x, 2) for x in v] for k, v in seconds.items()},
            "median_seconds": {k: round(v, 2) for k, v in median.items()},
            "images_per_second": {k: round(len(images) / v, 2) for k, v in median.items()},
            "small_job_median_seconds": {k: round(v, 2) for k, v in start_up.items()},
            # the rate once the actors run: the extra images over the extra time of the large job, per round
            # (the two jobs of a round ran back to back), then the median over the rounds
            "images_per_second_after_start": {
                k: round(float(np.median([(len(images) - len(few)) / max(big - little, 1e-9)
                                          for big, little in zip(seconds[k], small[k])])), 2) for k in small},
            "small_job_seconds_each_round": {k: [round(x, 2) for x in v] for k, v in small.items()},
            "max_score_gap_relative_to_local": gaps}


def legacy(data: dict) -> Results:
    """distributed.json as written before the harness: scoring and fits as sections, the load in "machine"."""
    m = dict(data["machine"])
    run = {"load_average_before": m.pop("load_average_before"), "load_average_after": m.pop("load_average_after")}
    versions = {"ray": m.pop("ray")}
    m["cores"] = m.pop("cpu_cores")
    rows = [{"part": "scoring", **data["scoring"]}] + [{"part": "fit", "model": k, **v} for k, v in data["fits"].items()]
    return Results(SUITE, rows=rows, machine=m, settings={**data["settings"], "repeats": data["repeats"]}, runs=[run],
                   sections={"versions": versions})


def report(results: Results) -> str:
    m = results.machine
    s = results.find(part="scoring")
    pd, pc = results.find(part="fit", model="padim"), results.find(part="fit", model="patchcore")
    ips, median, rounds = s["images_per_second"], s["median_seconds"], s["seconds_each_round"]
    omp = m.get("omp_num_threads")
    engines = [{"engine": f"local `predict` (torch threads: {omp}, decoding workers: default)", "key": "local"},
               {"engine": "local `predict`, torch on 1 thread", "key": "local_1_thread"}]
    engines += [{"engine": f"Ray, {w} scoring actor(s) of 1 CPU", "key": f"ray_{w}"} for w in (1, 2)]

    def ray(cell):
        return lambda e: cell(e["key"]) if e["key"].startswith("ray") else "—"

    scoring = table(engines, [
        ("engine", "engine"), ("median seconds", lambda e: str(median[e["key"]])),
        ("images/s", lambda e: str(ips[e["key"]])), ("seconds, each round", lambda e: str(rounds[e["key"]])),
        (f"{s['small_job_images']}-image job (start-up)", ray(lambda k: f"{s['small_job_median_seconds'][k]} s")),
        ("images/s after start-up", ray(lambda k: str(s["images_per_second_after_start"][k]))),
        ("max score gap vs local (relative)", ray(lambda k: f"{s['max_score_gap_relative_to_local'][k]:.1e}")),
    ])
    gaps = ("mean", "covariance", "inverse_covariance")
    return markdown(
        "Beyond one machine, measured on one (benchmarks/distributed.py)",
        f"Machine: {describe(m, load=False)}, ray {results.sections['versions']['ray']}; "
        f"{describe_run(results.runs[-1])}. A local Ray cluster on the same 2 cores: the numbers show what the "
        "engine costs and that it computes the same thing, not a speed-up (that needs more machines).",
        f"## Scoring {s['images']} images of {s['image_size']} px (PaDiM run, no heatmaps), median of "
        f"{results.settings['repeats']} rounds",
        scoring,
        "Each round runs the four in turn. Ray times include starting the actors and loading the model in each "
        "(the local cluster itself is started before the clock); a Ray actor runs torch on one thread. The start-up "
        f"is the time of a {s['small_job_images']}-image job; images/s after start-up = (extra images) / (extra "
        "time) of the full job over the small one of the same round, median over the rounds — a difference of two "
        "times on a shared machine, so only its order of magnitude means something. Torch on 2 threads slows down "
        "many times over whenever another job takes a core (its threads wait on each other); on one thread it does "
        "not — compare the two local rows round by round.",
        f"## PaDiM fitted on {pd['shards']} shards vs one process",
        ["| | single fit | sharded fit |", "|---|---|---|",
         f"| fit seconds | {pd['single_fit_s']} | {pd['sharded_fit_s']} |",
         f"| threshold | {pd['threshold_single']:.6g} | {pd['threshold_sharded']:.6g} |",
         f"| image AUROC | {pd['auroc_single']:.4f} | {pd['auroc_sharded']:.4f} |"],
        "Largest differences, relative to the largest entry (the reference line: two single fits with batch 8 and 16, "
        "i.e. the float rounding of the method itself):",
        ["| | mean | covariance | inverse covariance |", "|---|---|---|---|",
         "| sharded vs single | " + " | ".join(f"{pd['gap_sharded_vs_single'][k]:.1e}" for k in gaps) + " |",
         "| single batch 8 vs single batch 16 | "
         + " | ".join(f"{pd['gap_batch8_vs_batch16_single'][k]:.1e}" for k in gaps) + " |"],
        f"Test scores: largest relative difference {pd['max_score_gap_relative']:.1e}.",
        f"## PatchCore fitted on {pc['shards']} shards vs one process (composable coreset: 2·f per shard, f of the union)",
        ["| | single fit | sharded fit |", "|---|---|---|",
         f"| fit seconds | {pc['single_fit_s']} | {pc['sharded_fit_s']} |",
         f"| memory bank entries | {pc['bank_single']} | {pc['bank_sharded']} |",
         f"| coverage radius (training patches) | {pc['coverage_radius_single']:.4f} | {pc['coverage_radius_sharded']:.4f} |",
         f"| threshold | {pc['threshold_single']:.6g} | {pc['threshold_sharded']:.6g} |",
         f"| image AUROC | {pc['auroc_single']:.4f} | {pc['auroc_sharded']:.4f} |"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=60)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the scoring measurements")
    parser.add_argument("--quick", action="store_true", help="24 training and 32 test images, one repeat")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"results stem: writes OUTPUT.json and OUTPUT.md (default {OUTPUT}; --quick: {WORK / 'quick'})")
    parser.add_argument("--report-only", action="store_true", help="rebuild OUTPUT.md from OUTPUT.json")
    args = parser.parse_args()
    output = args.output or (WORK / "quick" if args.quick else OUTPUT)
    if args.report_only:
        results = Results.load(output.with_name(output.name + ".json"), SUITE, legacy)
        print(f"wrote {write_report(output.with_name(output.name + '.md'), report(results))}")
        return
    if args.quick:
        args.n_train, args.n_test, args.repeats = 24, 32, 1
    import ray

    os.environ.setdefault("TQDM_DISABLE", "1")
    WORK.mkdir(parents=True, exist_ok=True)
    run = Run()
    category = prepare(args.n_train, args.n_test, args.size)
    scoring = bench_scoring(category, args.size, args.repeats)
    fits = bench_fits(category, args.size, args.shards)
    rows = [{"part": "scoring", **scoring}] + [{"part": "fit", "model": k, **v} for k, v in fits.items()]
    settings = {"n_train": args.n_train, "n_test": args.n_test, "image_size": args.size, "repeats": args.repeats}
    results = Results(SUITE, rows=rows, machine=machine("cpu"), settings=settings, runs=[run.record()],
                      sections={"versions": {"ray": ray.__version__}})
    results.write(output, report(results))
    print(json.dumps(results.to_dict(), indent=2))


if __name__ == "__main__":
    main()
