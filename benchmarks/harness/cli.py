"""The options every suite shares: where its results go, rebuilding its report, a smoke configuration."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from .results import Results, write_report


def output_options(parser: argparse.ArgumentParser, default: Path, *, smoke: str | None = None,
                   flag: str = "--output", what: str = "results folder") -> None:
    """``--output`` (``flag``) with its default, ``--report-only`` and, given ``smoke`` (what the smoke
    configuration runs), ``--smoke``."""
    parser.add_argument(flag, dest="output", type=Path, default=default, help=f"{what} (default {default})")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild the markdown report from the JSON (the JSON is left as it is)")
    if smoke:
        parser.add_argument("--smoke", action="store_true",
                            help=f"{smoke}: a check that the suite runs (give {flag} away from the committed results)")


def refuse_smoke_into(parser: argparse.ArgumentParser, args: argparse.Namespace, default: Path,
                      flag: str = "--output") -> None:
    """A smoke run never writes over the committed results."""
    if getattr(args, "smoke", False) and Path(args.output).resolve() == Path(default).resolve():
        parser.error(f"--smoke: give {flag}, away from the committed results")


def rebuild_report(json_path: Path, md_path: Path, suite: str, report: Callable[[Results], str],
                   legacy: Callable[[dict], Results] | None = None) -> Path:
    """``--report-only``: the markdown from the JSON (read through ``legacy`` when written before the harness)."""
    path = write_report(md_path, report(Results.load(json_path, suite, legacy)))
    print(f"wrote {path}")
    return path
