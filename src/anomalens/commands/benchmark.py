"""``anomalens benchmark``: detectors × datasets × seeds → a leaderboard with 95 % intervals, paired tests,
tables, plots and an HTML page, in one resumable results folder (``anomalens.benchmarking``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from anomalens.commands.options import RAY_ADDRESS_HELP, add_log_arguments, positive_count, positive_number
from anomalens.commands.tune import add_track_argument

SYNTHETIC_NAMES = ("brick", "grass", "gravel", "coffee", "chelsea")  # anomalens.data.synthetic, without numpy


def add_benchmark_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Fit and test every detector on every dataset category with every seed, each job in its own "
                     "process with a time limit; write a leaderboard with bootstrap 95 % intervals and paired tests "
                     "(results.json, leaderboard.md/.csv, plots/, report.html). Rerunning the same command on the "
                     "same folder resumes it.")
    p.add_argument("-m", "--detector", dest="detectors", action="append", required=True, metavar="[LABEL=]NAME",
                   help="a detector to benchmark (repeat: -m padim -m patchcore); LABEL=NAME benchmarks NAME under "
                        "its own label, to compare settings of one detector: -m patchcore -m pc384=patchcore "
                        "-p pc384.image_size=384")
    p.add_argument("-p", "--param", action="append", default=[], metavar="DETECTOR.KEY=VALUE",
                   help="a detector setting, e.g. -p patchcore.coreset_ratio=0.01 (repeatable)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", nargs="+", metavar="PATH",
                      help="dataset category folders (any layout anomalens reads), dataset roots holding several, "
                           "or one-class protocols such as fmnist:normal=0")
    data.add_argument("--synthetic", nargs="*", metavar="CATEGORY", choices=SYNTHETIC_NAMES,
                      help=f"the built-in synthetic categories (default all: {' '.join(SYNTHETIC_NAMES)})")
    p.add_argument("--layout", metavar="NAME", help="with --data: read the folders as this layout instead of recognising them")
    p.add_argument("--synthetic-data", metavar="DIR",
                   help="with --synthetic: where the categories are built, or found (default: RESULTS/data)")
    p.add_argument("--synthetic-images", nargs=3, type=int, metavar=("TRAIN", "GOOD", "DEFECTIVE"), default=None,
                   help="with --synthetic: training, normal test and defective test images per category "
                        "(default 120 30 40, the README's table)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="N", help="detector seeds (default 0)")
    p.add_argument("--image-size", type=positive_count, dest="image_size", metavar="N",
                   help="the detectors' input size (default: each detector's own); with --synthetic also the size "
                        "the images are built at (default 256)")
    p.add_argument("--timeout", type=positive_number, default=3600.0, metavar="S",
                   help="seconds one job may take before it is stopped and marked failed (default 3600)")
    p.add_argument("--threads", type=positive_count, default=None, metavar="N",
                   help="compute threads per job (default: the cores this process may use)")
    p.add_argument("--bootstrap", type=positive_count, default=1000, metavar="B",
                   help="bootstrap replicates for the intervals and paired tests (default 1000)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: jobs one after the other here; ray: jobs as Ray tasks (a local cluster, or --address)")
    p.add_argument("--address", default=None, metavar="ADDR", help=RAY_ADDRESS_HELP)
    p.add_argument("-o", "--output", required=True, metavar="RESULTS", help="the results folder (created, or resumed)")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild the tables, plots and page from the jobs already done in RESULTS; run none")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing benchmark results folder made with another configuration")
    add_track_argument(p)
    add_log_arguments(p)
    p.set_defaults(func=run_benchmark_command)


def run_benchmark_command(args: argparse.Namespace) -> None:
    from anomalens.benchmarking import (SYNTHETIC_COUNTS, BenchmarkPlan, data_categories, parse_detectors,
                                        parse_overrides,
                                        run_benchmark, synthetic_categories)
    from anomalens.benchmarking.plan import SYNTHETIC_IMAGE_SIZE
    from anomalens.errors import ConfigError

    out = Path(args.output)
    if args.report_only and not (out / "benchmark.json").is_file():
        raise ConfigError(f"{out}: --report-only needs a benchmark results folder made by this command")
    if args.data is None and (args.layout is not None):
        raise ConfigError("--layout goes with --data, not with --synthetic")
    if args.data is not None and (args.synthetic_data or args.synthetic_images):
        raise ConfigError("--synthetic-data and --synthetic-images go with --synthetic, not with --data")
    if len(set(args.seeds)) != len(args.seeds):
        raise ConfigError(f"--seeds: a seed is given twice ({' '.join(map(str, args.seeds))})")
    overrides = parse_overrides(args.param)
    detectors, models = parse_detectors(args.detectors)
    synthetic = None
    if args.data is not None:
        categories = data_categories(args.data, args.layout)
        inputs = [c.data for c in categories if Path(c.data).exists()]
    else:
        names = list(dict.fromkeys(args.synthetic or SYNTHETIC_NAMES))
        counts = dict(zip(SYNTHETIC_COUNTS, args.synthetic_images)) if args.synthetic_images else dict(SYNTHETIC_COUNTS)
        if min(counts.values()) < 1:
            raise ConfigError("--synthetic-images: every count must be at least 1")
        size = args.image_size or SYNTHETIC_IMAGE_SIZE
        synthetic = {"categories": names, "image_size": size, **counts}
        plan = BenchmarkPlan(detectors, [], list(args.seeds), overrides, args.image_size, synthetic, models)
        plan.check()  # before building any image
        root = Path(args.synthetic_data) if args.synthetic_data else out / "data"
        if not args.synthetic_data:
            from anomalens.benchmarking.runner import open_results_folder

            # the data lives in the results folder: create (or resume) it first, with the categories' names
            plan.categories = [_placeholder(name, root) for name in names]
            open_results_folder(out, plan, args.overwrite, [], folders=(root.name,))
            args.overwrite = False  # the folder is now this configuration's
        categories = synthetic_categories(names, root, size, counts)
        inputs = [] if not args.synthetic_data else [str(root)]
    plan = BenchmarkPlan(detectors, categories, list(args.seeds), overrides, args.image_size, synthetic, models)
    plan.check()
    from anomalens.tracking import open_tracker

    with open_tracker(args.track) as tracker:  # one tracker run per job, and one for the leaderboard
        results = run_benchmark(plan, out, overwrite=args.overwrite, timeout=args.timeout, engine=args.engine,
                                address=args.address, threads=args.threads, n_boot=args.bootstrap,
                                tracker=tracker if args.track else None, progress=not args.quiet, inputs=inputs,
                                run_jobs=not args.report_only)
    failed = [j for j in results["jobs"] if j["status"] != "ok"]
    print(f"wrote {out / 'leaderboard.md'}, {out / 'report.html'} and {out / 'results.json'}"
          + (f" ({len(failed)} of {len(results['jobs'])} jobs failed: see the tables)" if failed else ""))


def _placeholder(name: str, root: Path):
    """The category ``synthetic_categories`` will return for ``name`` (same name, folder and layout)."""
    from anomalens.benchmarking import Category

    return Category(name, str((root / name).resolve()), "mvtec")
