"""``anomalens tune``: a hyper-parameter search whose result ``fit --config`` reads; and ``--track``, the
experiment-tracking option that ``fit``, ``test`` and ``tune`` share."""

from __future__ import annotations

import argparse

from anomalens.commands.options import add_log_arguments, image_size, param_assignment, positive_count, positive_number


def track_spec(text: str) -> str:
    """``--track``'s argument type: a tracker's name, checked without importing it."""
    from anomalens.errors import ConfigError
    from anomalens.tracking import check_track_spec

    try:
        return check_track_spec(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--track {text!r}: ")) from None


def add_track_argument(p: argparse.ArgumentParser) -> None:
    from anomalens.tracking import TRACK_HELP

    p.add_argument("--track", type=track_spec, default=None, metavar="SPEC", help=TRACK_HELP)


def add_tune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="detector name (see 'anomalens list')")
    p.add_argument("data", nargs="?", help="the data as for fit; only its training images are read (and its "
                                           "validation/good images when the layout ships them), never its test split")
    p.add_argument("--layout", metavar="NAME", help="read DATA as this layout instead of recognising it")
    p.add_argument("--normal", metavar="DIR", help="instead of DATA: a folder of normal training images")
    p.add_argument("-o", "--output", required=True, metavar="TUNE_DIR",
                   help="folder for best.yaml, trials.csv and the study (run again to continue a stopped tune)")
    p.add_argument("--trials", type=positive_count, required=True, metavar="N",
                   help="trials in all (a rerun into the same folder continues up to N)")
    p.add_argument("--timeout", type=positive_number, default=None, metavar="S",
                   help="start no new trial after S seconds (a running trial finishes)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampler (TPE) and every trial's fit (default 0)")
    p.add_argument("-p", "--param", action="append", type=param_assignment, metavar="KEY=VALUE",
                   help="a hyper-parameter every trial uses, e.g. -p image_size=128 (repeatable)")
    p.add_argument("--image-size", type=image_size, dest="image_size", metavar="N|HxW",
                   help="input size of every trial (as -p image_size=N)")
    p.add_argument("--space", metavar="FILE",
                   help="search space YAML replacing the detector's default: PARAM: {low: A, high: B[, log: true]"
                        "[, step: S]} or PARAM: {choices: [...]}")
    p.add_argument("--validation", metavar="DATA2",
                   help="score trials on the labelled images (test split) of DATA2, which must share no image with "
                        "DATA's test split (default: held-out training normals, each also with a pasted synthetic defect)")
    p.add_argument("--holdout", type=float, default=0.2, metavar="F",
                   help="share of the training normals held out for validation when the layout has no validation "
                        "split (default 0.2)")
    p.add_argument("--overwrite", action="store_true", help="start over in an existing tune folder")
    add_track_argument(p)
    add_log_arguments(p)
    p.set_defaults(func=run_tune, abnormal=[], test_normal=None, masks=None, unified=False)


def run_tune(args: argparse.Namespace) -> None:
    from anomalens.commands.options import data_source
    from anomalens.errors import ConfigError
    from anomalens.params import short_repr
    from anomalens.tracking import open_tracker
    from anomalens.tuning import read_space, tune

    fixed: dict = {}
    for key, value in args.param or []:
        if key in fixed and fixed[key] != value:
            raise ConfigError(f"-p {key} is given twice ({short_repr(fixed[key])} and {short_repr(value)}); give it once")
        fixed[key] = value
    if args.image_size is not None:
        fixed["image_size"] = args.image_size
    space = read_space(args.space) if args.space else None
    with open_tracker(args.track) as tracker:
        best = tune(args.model, data_source(args), args.output, trials=args.trials, timeout=args.timeout,
                    seed=args.seed, fixed=fixed, space=space, validation=args.validation, holdout=args.holdout,
                    overwrite=args.overwrite, tracker=tracker)
    image = best["image_auroc"]
    print(f"best of {best['trials']} trials: trial {best['number']}, validation objective {best['objective']:.4f}"
          + (f" (image AUROC {image:.4f})" if image is not None else "")
          + f" → {args.output}/best.yaml (anomalens fit {args.model} DATA --config {args.output}/best.yaml -o RUN)")
