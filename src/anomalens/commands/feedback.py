"""``anomalens feedback export`` and ``anomalens refit --with-feedback``: the operator's judgements from the
service's history (``anomalens.feedback``) into a labelled folder, and into a refitted run."""

from __future__ import annotations

import argparse

from anomalens.commands.options import add_common_arguments, add_log_arguments
from anomalens.errors import ConfigError


def add_feedback_arguments(p: argparse.ArgumentParser) -> None:
    add_log_arguments(p)  # -q / --log-level before ACTION too (every command has them)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION", help="export: the judged images")
    export = actions.add_parser("export", help="the judged images as a labelled dataset folder (MVTec AD layout: "
                                               "train/good, test/good, test/confirmed_defect, test/missed_defect)")
    export.add_argument("source", metavar="RUN_OR_STATE",
                        help="a served run or export (its default state folder is read), or a state folder")
    export.add_argument("output", metavar="OUT", help="dataset folder to create (fit, calibrate and test read it)")
    export.add_argument("--state", metavar="DIR", default=None, help="the state folder its service used (--state)")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export")
    add_log_arguments(export)
    export.set_defaults(func=run_feedback_export)


def run_feedback_export(args: argparse.Namespace) -> None:
    from anomalens.feedback.export import export_feedback
    from anomalens.feedback.store import state_for

    summary = export_feedback(state_for(args.source, args.state), args.output, overwrite=args.overwrite)
    counts = summary["counts"]
    lost = f"; {summary['lost_to_retention']} judged image(s) no longer kept" if summary["lost_to_retention"] else ""
    print(f"exported {summary['images']} judged image(s) → {args.output}: {counts['false_alarm']} false alarm(s) in "
          f"train/good and test/good, {counts['confirmed_defect']} confirmed and {counts['missed_defect']} missed "
          f"defect(s) in test/{lost}")


def add_refit_arguments(p: argparse.ArgumentParser) -> None:
    from anomalens.feedback import DEFAULT_HOLDOUT

    p.add_argument("run", metavar="RUN", help="the run to learn from its feedback (only read)")
    p.add_argument("--with-feedback", action="store_true", required=True,
                   help="add the confirmed normals (false alarms) of the service's history to the training images")
    p.add_argument("-o", "--output", required=True, metavar="NEW_RUN", help="run folder to create")
    p.add_argument("--state", metavar="DIR", default=None,
                   help="the state folder its service used (default: the run's default state folder)")
    p.add_argument("--data", metavar="DATA", default=None,
                   help="the run's training data, when it is no longer where run.json says")
    p.add_argument("--holdout", type=float, default=DEFAULT_HOLDOUT, metavar="FRACTION",
                   help=f"share of each class of the feedback held out to judge the refit (default "
                        f"{DEFAULT_HOLDOUT:.3g})")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing NEW_RUN (never RUN)")
    add_common_arguments(p)
    p.set_defaults(func=run_refit)


def run_refit(args: argparse.Namespace) -> None:
    if not args.with_feedback:
        raise ConfigError("refit learns from the operator's feedback: pass --with-feedback")
    from anomalens.feedback.refit import refit_run, summary_lines

    report = refit_run(args.run, args.output, state=args.state, data=args.data, holdout=args.holdout, seed=args.seed,
                       device=args.device, overwrite=args.overwrite,
                       progress=not args.quiet)
    for line in summary_lines(report):
        print(line)
    print(f"→ {args.output} (before / after in {args.output}/refit.json; {args.run} unchanged)")
