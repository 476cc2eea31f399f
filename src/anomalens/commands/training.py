"""``anomalens fit``, ``calibrate`` and ``demo``: the commands that make or change a run."""

from __future__ import annotations

import argparse

from anomalens.commands.options import (RAY_ADDRESS_HELP, add_common_arguments, add_data_arguments, data_source,
                                        fit_params, image_size, param_assignment)
from anomalens.commands.tune import add_track_argument
from anomalens.errors import ConfigError

DATA_HELP = ("a dataset folder as it ships (MVTec AD, MVTec AD 2, MVTec LOCO, VisA, BTAD; see --layout), a folder of "
             "normal images, or a one-class protocol such as mnist:normal=7,8:abnormal=2 or fashion-mnist:abnormal=0")


def add_fit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="detector name (see 'anomalens list')")
    add_data_arguments(p, DATA_HELP)
    p.add_argument("-o", "--output", required=True, help="run folder to create")
    p.add_argument("--config", metavar="FILE",
                   help="hyper-parameters from a YAML or JSON file (the keys of -p), or a run's detector.json to fit "
                        "that run again; options and -p on the command line override it")
    p.add_argument("--backbone", help="feature backbone (default efficientnet_lite0; any timm name with internet)")
    p.add_argument("--weights", help="local backbone weights file (.pth / .safetensors), or 'random'")
    p.add_argument("--image-size", type=image_size, dest="image_size", metavar="N|HxW",
                   help="input size in pixels: N (square) or HxW, e.g. 224x320 (default 256)")
    p.add_argument("--batch-size", type=int, dest="batch_size", help="images per batch (default 16)")
    p.add_argument("--seed", type=int, help="random seed: the same seed and data give the same run (default 0)")
    p.add_argument("-p", "--param", action="append", type=param_assignment, metavar="KEY=VALUE",
                   help="any detector hyper-parameter, e.g. -p n_features=100 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--engine", choices=["local", "ray", "ddp"], default=None,
                   help="local: this process (default); ray: padim / patchcore on Ray shards (sums / coresets merged, "
                        "pip install 'anomalens[ray]'); ddp: the detectors that train, data-parallel in every process "
                        "of 'torchrun ... -m anomalens.cli fit ...' (the default when torchrun started the process)")
    p.add_argument("--address", default=None, metavar="ADDR", help=RAY_ADDRESS_HELP)
    p.add_argument("--shards", type=int, default=None, metavar="N",
                   help="--engine ray: shard workers (default: one per CPU of the cluster, or per GPU when it has GPUs)")
    p.add_argument("--resume", action="store_true",
                   help="--engine ddp: continue a stopped data-parallel fit from its last checkpoint")
    add_track_argument(p)
    add_common_arguments(p)
    p.set_defaults(func=run_fit)


def run_fit(args: argparse.Namespace) -> None:
    data = data_source(args)
    from anomalens import engines
    from anomalens.tracking import open_tracker
    from anomalens.workflow import fit_run

    engine = {"ray": lambda: engines.RayShards(shards=args.shards, address=args.address),
              "ddp": lambda: engines.DataParallel(resume=args.resume),
              "local": lambda: None}[fit_engine(args)]()
    with open_tracker(args.track) as tracker:
        detector = fit_run(args.model, data, args.output, fit_params(args), overwrite=args.overwrite,
                           progress=not args.quiet, engine=engine, tracker=tracker)
    if detector is None:  # a torchrun rank other than 0: rank 0 writes the run and says so
        return
    print(f"fitted {detector.name} on {data} → {args.output} (threshold {detector.threshold_:.4g}, {detector.decision_.description})")


def fit_engine(args: argparse.Namespace) -> str:
    """fit's engine: --engine, else ddp when torchrun started this process, else local; options of another
    engine are refused."""
    from anomalens.distributed.ddp import launched_by_torchrun

    engine = args.engine or ("ddp" if launched_by_torchrun() else "local")
    for option, value, needs in (("--shards", args.shards, "ray"), ("--address", args.address, "ray"),
                                 ("--resume", args.resume, "ddp")):
        if value and engine != needs:
            raise ConfigError(f"{option} is an option of --engine {needs} (this fit runs with --engine {engine})")
    return engine


def add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder (anomalens fit); its decision rule is replaced")
    add_data_arguments(p, "as for fit (its test split is used, else its normal images)")
    p.add_argument("--method", choices=["f1", "area"], default="f1",
                   help="f1: F1-optimal image threshold; area: the seed's minimum defect area + pixel threshold")
    p.add_argument("--clear-border", action="store_true", help="area method: ignore regions touching the image border")
    add_common_arguments(p)
    p.set_defaults(func=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> None:
    from anomalens.workflow import calibrate_run

    info = calibrate_run(args.run, data_source(args), method=args.method, clear_border=args.clear_border,
                         device=args.device, progress=not args.quiet)
    rule = (f"min_area {info['min_area']} px, pixel threshold {info['pixel_threshold']:.4g}" if args.method == "area"
            else f"threshold {info['threshold']:.4g}")
    print(f"{rule} ({info['note']})")


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="anomalens-demo",
                   help="folder to create for the data, runs and index.html (default anomalens-demo)")
    p.add_argument("--model", default="padim", help="detector to fit (default padim; see 'anomalens list')")
    p.add_argument("--sources", nargs="+", default=None, help="synthetic categories (default: brick coffee)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo folder")
    add_common_arguments(p)
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> None:
    from anomalens.demo import run_demo as demo

    demo(args.output, model=args.model, sources=args.sources, overwrite=args.overwrite, progress=not args.quiet)
