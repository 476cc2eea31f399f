"""``anomalens list`` and ``anomalens params``: the detectors and their hyper-parameters, without torch."""

from __future__ import annotations

import argparse

from anomalens.commands.options import add_log_arguments


def add_list_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="a detector name: print its hyper-parameters, defaults and meanings")
    add_log_arguments(p)
    p.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> None:
    from anomalens.catalog import describe_detector, list_detectors

    if args.model:
        run_params(args)
        return
    for name in list_detectors():
        info = describe_detector(name)
        print(f"{name:14s} {'maps' if info['localizes'] else 'image-level':11s} {info['summary']}")


def add_params_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="detector name (see 'anomalens list')")
    add_log_arguments(p)
    p.set_defaults(func=run_params)


def run_params(args: argparse.Namespace) -> None:
    """The hyper-parameter table of one detector, from its declaration (what ``-p KEY=VALUE`` accepts)."""
    from anomalens.catalog import describe_detector

    info = describe_detector(args.model)
    print(f"{info['name']}: {info['summary']}")
    rows = [("parameter", "default", "accepts", "meaning"), *info["params"]]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
