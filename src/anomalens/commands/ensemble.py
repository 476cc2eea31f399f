"""``anomalens ensemble``: one detector over the normalised scores of fitted runs, with its own threshold."""

from __future__ import annotations

import argparse

from anomalens.commands.options import add_common_arguments, param_assignment
from anomalens.errors import ConfigError


def add_ensemble_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="two or more fitted runs (anomalens fit) of different detectors")
    p.add_argument("-o", "--output", required=True, help="run folder to create for the ensemble")
    p.add_argument("--data", help="training data (default: the data the runs were fitted on, which must be the same)")
    p.add_argument("--combine", choices=["mean", "max"], default="mean",
                   help="mean (default) or max of the members' normalised scores and maps")
    p.add_argument("-p", "--param", action="append", type=param_assignment, metavar="KEY=VALUE",
                   help="an ensemble hyper-parameter, e.g. -p threshold_folds=10 or -p false_alarm_rate=0.02")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    add_common_arguments(p)
    p.set_defaults(func=run_ensemble)


def run_ensemble(args: argparse.Namespace) -> None:
    from pathlib import Path

    from anomalens.outputs.targets import check_not_input
    from anomalens.workflow import fit_run
    from anomalens.workflow.ensemble import ensemble_params

    check_not_input(Path(args.output), args.runs)  # the member runs are inputs: --overwrite never replaces one
    params, data = ensemble_params(args.runs, args.combine)
    for key, value in args.param or []:
        if key in ("members", "member_params", "combine"):
            raise ConfigError(f"-p {key}: the ensemble's members and combination come from the runs and --combine")
        params[key] = value
    if args.device is not None:
        params["device"] = args.device
    data = args.data or data
    if data is None:
        raise ConfigError("ensemble: the runs were fitted on different data (or their run.json does not say); "
                          "give the training data with --data")
    detector = fit_run("ensemble", data, args.output, params, overwrite=args.overwrite, progress=not args.quiet)
    print(f"fitted an ensemble ({detector.params['combine']} of {detector.params['members']}) on {data} → "
          f"{args.output} (threshold {detector.threshold_:.4g}, {detector.decision_.description})")
