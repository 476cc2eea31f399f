"""Speed suite: `anomalens test RUN DATA` (report included) against `detector.predict` on the same images
(issue 25, item 3: the command at most 2x the model's own predict).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/test_command.py                 # 3 categories, 2 detectors, 3 repeats
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/test_command.py --categories brick --repeats 1
    .venv/bin/python benchmarks/test_command.py --smoke --output /tmp/test_command   # brick, padim, once, no baseline

Data: the synthetic categories of ``harness.datasets`` (30 normal + 40 defective test images of 256 px each).
Runs (under ``benchmarks/_work/test_command/runs``, fitted once by this working tree): PaDiM at its defaults,
PatchCore at its defaults but ``threshold_folds=1`` (a hold-out threshold: its cross-fitted fit takes minutes,
and the test-time work does not depend on how the threshold was set). Every measurement is a fresh process
(``harness.run_job``), interleaved per repeat so a change of machine load hits all alike:

- ``predict``: ``import anomalens``, ``load_detector``, ``detector.predict(test records)`` — the process's wall
  time and, timed inside it, the ``predict`` call alone;
- ``test-baseline``: ``anomalens test`` as a command with the code of ``--baseline`` (default HEAD, a git
  worktree made by ``harness.checkout``) first on PYTHONPATH;
- ``test-current``: ``anomalens test`` as a command with this working tree.

After the timings, metrics.json and scores.csv of the baseline and current reports are compared byte for byte
(metrics.json without ``test_seconds`` and ``images_per_second``, which are timings).
Results: ``results/test_command/results.{json,md}`` with the machine and its load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from harness import RESULTS, ROOT, WORK, Results, Run, checkout, describe, describe_run, machine, markdown, run_job
from harness import short_commit, table
from harness.cli import output_options, rebuild_report, refuse_smoke_into
from harness.datasets import synthetic_category

SUITE = "test_command"
OUTPUT = RESULTS / "test_command"
HERE_WORK = WORK / "test_command"
CATEGORIES = ["brick", "grass", "coffee"]
DETECTORS = ["padim", "patchcore"]
FIT_PARAMS = {"padim": [], "patchcore": ["-p", "threshold_folds=1"]}
TIMINGS = ("test_seconds", "images_per_second")  # metrics.json fields that are measurements, not metrics
CLI = [sys.executable, "-c", "import sys; from anomalens.cli import main; sys.exit(main())"]


def _threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", "2"))


def predict_job(run: str, data: str) -> dict:
    """In a fresh process: the seconds of the imports, the model load and ``detector.predict`` on the test split."""
    start = time.perf_counter()
    import anomalens
    from anomalens.data import load_mvtec_category

    imported = time.perf_counter()
    detector = anomalens.load_detector(run, device="cpu")
    records = load_mvtec_category(data).test
    loaded = time.perf_counter()
    result = detector.predict(records, progress=False)
    done = time.perf_counter()
    return {"import_seconds": imported - start, "load_seconds": loaded - imported, "predict_seconds": done - loaded,
            "images": len(result.scores)}


def prepare(detector: str, category: str) -> tuple[Path, Path]:
    """(data folder, run folder), fitted by this working tree when missing."""
    data = synthetic_category(category)
    run = HERE_WORK / "runs" / f"{detector}-{category}"
    if not (run / "detector.json").is_file():
        run_job([*CLI, "fit", detector, str(data), "-o", str(run), "-q", "--device", "cpu", "--overwrite",
                 *FIT_PARAMS[detector]], threads=_threads(), src=ROOT / "src")
    return data, run


def test_job(src: Path, run: Path, data: Path, out: Path) -> dict:
    job = run_job([*CLI, "test", str(run), str(data), "-o", str(out), "-q", "--device", "cpu"], src=src,
                  threads=_threads())
    return {"seconds": job.seconds, "cpu_seconds": (job.user_seconds or 0) + (job.system_seconds or 0)}


def same_outputs(baseline: Path, current: Path) -> dict:
    """Byte-for-byte comparison of the two reports' scores.csv and metrics.json (timings left out)."""
    def metrics(folder: Path) -> dict:
        values = json.loads((folder / "metrics.json").read_text())
        return {k: v for k, v in values.items() if k not in TIMINGS}

    a, b = metrics(baseline), metrics(current)
    return {"scores_csv_identical": (baseline / "scores.csv").read_bytes() == (current / "scores.csv").read_bytes(),
            "metrics_json_identical": json.dumps(a) == json.dumps(b),
            "metrics_fields_differing": sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))}


COLUMNS = [("category", "category"), ("detector", "detector"), ("what", "what"),
           ("median s", "median_seconds", 2), ("CPU s", "median_cpu_seconds", 2),
           ("predict call s", "median_predict_call_seconds", 2),
           ("runs (s)", lambda r: ", ".join(f"{x:.1f}" for x in r["all_seconds"]))]
RATIO_COLUMNS = [("category", "category"), ("detector", "detector"),
                 ("test-current / predict process", "current_over_predict_process", 2),
                 ("test-current / predict call", "current_over_predict_call", 2),
                 ("test-baseline / predict process", "baseline_over_predict_process", 2),
                 ("test-current / test-baseline", "current_over_baseline", 2),
                 ("scores.csv identical", "scores_csv_identical", None),
                 ("metrics.json identical", "metrics_json_identical", None)]


def report(results: Results) -> str:
    baseline = results.settings.get("baseline")
    return markdown(
        "`anomalens test` against `detector.predict` (issue 25, item 3)",
        [f"Machine: {describe(results.machine, load=False)}, shared with other jobs; "
         + "; ".join(describe_run(r) for r in results.runs) + ".",
         f"Data: {results.sections['data']}. Repeats: {results.settings.get('repeats')}, interleaved; every "
         "number is a fresh process's wall time (median). Baseline: "
         + (f"`{baseline}` (git worktree)." if baseline else "none.")],
        table(results.rows, COLUMNS),
        "Ratios (target: test-current / predict <= 2). `predict process` = a fresh process importing anomalens, "
        "loading the run and calling `detector.predict`; `predict call` = that call alone.",
        table(results.sections.get("ratios", []), RATIO_COLUMNS),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision of the code before the change")
    parser.add_argument("--no-baseline", action="store_true", help="measure the working tree only")
    parser.add_argument("--categories", nargs="+", default=CATEGORIES)
    parser.add_argument("--detectors", nargs="+", default=DETECTORS, choices=DETECTORS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--current-src", type=Path, default=ROOT / "src",
                        help="the library tree measured as current (default this working tree's src; another "
                             "helper's uncommitted changes are in it too)")
    output_options(parser, OUTPUT, smoke="brick, padim, one repeat, no baseline")
    args = parser.parse_args()
    refuse_smoke_into(parser, args, OUTPUT)
    if args.report_only:
        rebuild_report(args.output / "results.json", args.output / "results.md", SUITE, report)
        return
    if args.smoke:
        args.categories, args.detectors, args.repeats, args.no_baseline = ["brick"], ["padim"], 1, True

    versions = {"current": args.current_src.resolve()}
    commit = None
    if not args.no_baseline:
        commit = short_commit(args.baseline)
        versions = {"baseline": checkout(args.baseline) / "src", **versions}
    cases = [(c, d, *prepare(d, c)) for c in args.categories for d in args.detectors]
    run = Run()
    samples: dict[tuple, list[dict]] = {}
    for repeat in range(args.repeats):
        for category, detector, data, fitted in cases:
            job = run_job(predict_job, str(fitted), str(data), threads=_threads())
            samples.setdefault((category, detector, "predict"), []).append(
                {"seconds": job.seconds, "cpu_seconds": (job.user_seconds or 0) + (job.system_seconds or 0),
                 "predict_call_seconds": job.value["predict_seconds"]})
            for version, src in versions.items():
                out = HERE_WORK / "out" / f"{version}-{detector}-{category}"
                samples.setdefault((category, detector, f"test-{version}"), []).append(test_job(src, fitted, data, out))
            done = [f"{what} {s[-1]['seconds']:.1f} s" for (c, d, what), s in samples.items()
                    if (c, d) == (category, detector)]
            print(f"[{repeat + 1}/{args.repeats}] {category} {detector}: " + ", ".join(done), flush=True)
    entry = run.record(repeats=args.repeats)

    def median(values: list[dict], key: str) -> float | None:
        found = [v[key] for v in values if v.get(key) is not None]
        return round(statistics.median(found), 3) if found else None

    rows = [{"category": c, "detector": d, "what": what, "median_seconds": median(s, "seconds"),
             "median_cpu_seconds": median(s, "cpu_seconds"),
             "median_predict_call_seconds": median(s, "predict_call_seconds"),
             "all_seconds": [round(v["seconds"], 2) for v in s]} for (c, d, what), s in samples.items()]
    ratios = []
    for category, detector, _, _ in cases:
        row = {r["what"]: r for r in rows if (r["category"], r["detector"]) == (category, detector)}
        predict, current = row["predict"], row["test-current"]
        ratio = {"category": category, "detector": detector,
                 "current_over_predict_process": current["median_seconds"] / predict["median_seconds"],
                 "current_over_predict_call": current["median_seconds"] / predict["median_predict_call_seconds"]}
        if "test-baseline" in row:
            ratio["baseline_over_predict_process"] = row["test-baseline"]["median_seconds"] / predict["median_seconds"]
            ratio["current_over_baseline"] = current["median_seconds"] / row["test-baseline"]["median_seconds"]
            ratio.update(same_outputs(HERE_WORK / "out" / f"baseline-{detector}-{category}",
                                      HERE_WORK / "out" / f"current-{detector}-{category}"))
        ratios.append(ratio)
    data = ("synthetic categories " + ", ".join(args.categories) + " (30 normal + 40 defective test images, 256 px); "
            "PaDiM defaults, PatchCore defaults with threshold_folds=1")
    results = Results(SUITE, rows=rows, machine=machine("cpu"),
                      settings={"baseline": commit, "repeats": args.repeats, "categories": args.categories,
                                "detectors": args.detectors, "current_src": str(versions["current"])},
                      runs=[entry], sections={"data": data, "ratios": ratios})
    text = report(results)
    results.write(args.output / "results", text)
    print(text)


if __name__ == "__main__":
    main()
