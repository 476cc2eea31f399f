"""Command line: anomalens fit | test | predict | calibrate | demo | list | params | export | verify-export | serve.

Each command's options and its work are in ``anomalens.commands`` (``add_<command>_arguments`` and the
function that runs it); this module assembles the parser, sets up the log and turns errors into one line.
Bad input ends with one line ``anomalens: error: <what, where>`` and exit status 2; nothing half-written is
left behind (see ``anomalens.outputs``). Building the parser imports nothing heavy: ``list``, ``params`` and
every ``--help`` run without torch or numpy.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from typing import Callable, NoReturn, Sequence

from anomalens.allocator import keep_freed_memory
from anomalens.commands.benchmark import add_benchmark_arguments
from anomalens.commands.detectors import add_list_arguments, add_params_arguments
from anomalens.commands.distill import add_distill_teacher_arguments
from anomalens.commands.ensemble import add_ensemble_arguments
from anomalens.commands.evaluation import add_test_arguments
from anomalens.commands.exports import add_export_arguments, add_verify_export_arguments
from anomalens.commands.feedback import add_feedback_arguments, add_refit_arguments
from anomalens.commands.prediction import add_predict_arguments
from anomalens.commands.serving import add_serve_arguments
from anomalens.commands.training import add_calibrate_arguments, add_demo_arguments, add_fit_arguments
from anomalens.commands.tune import add_tune_arguments
from anomalens.commands.watch import add_watch_arguments
from anomalens.errors import AnomalensError, Terminated
from anomalens.version import __version__

# name, one-line help, the function adding its arguments (which also sets the function that runs it)
COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = [
    ("fit", "train a detector on the normal images of DATA (train/good)", add_fit_arguments),
    ("test", "evaluate a run on the test split of DATA; writes metrics.json and report.html", add_test_arguments),
    ("predict", "score new images; writes predictions.csv/.jsonl, heatmaps and masks", add_predict_arguments),
    ("calibrate", "set the run's threshold on labelled data (test split of DATA)", add_calibrate_arguments),
    ("demo", "build synthetic categories from real photos, fit, test and write reports", add_demo_arguments),
    ("list", "list the available detectors (with MODEL: its hyper-parameters)", add_list_arguments),
    ("export", "export a fitted run as one inference graph (ONNX or OpenVINO) + export.json", add_export_arguments),
    ("verify-export", "compare an export with the torch model on real images", add_verify_export_arguments),
    ("params", "a detector's hyper-parameters: defaults, accepted values, meanings", add_params_arguments),
    ("serve", "serve a run or an export over HTTP: REST API, operator page at /, docs at /docs", add_serve_arguments),
    ("feedback", "export the operator's judged images from the service's history as a labelled dataset folder",
     add_feedback_arguments),
    ("refit", "refit a run with the operator's feedback (confirmed normals added); before / after on held-out "
     "feedback", add_refit_arguments),
    ("watch", "score a hot folder, video, stream or camera as images arrive; verdicts to JSON lines, MQTT, "
     "OPC UA, webhooks", add_watch_arguments),
    ("ensemble", "fit one detector over the normalised scores of fitted runs, with its own cross-fitted threshold",
     add_ensemble_arguments),
    ("distill-teacher", "distil an EfficientAD teacher (a PDN) from a pretrained backbone on an image pool",
     add_distill_teacher_arguments),
    ("benchmark", "detectors × datasets × seeds → a leaderboard with confidence intervals and paired tests (resumable)",
     add_benchmark_arguments),
    ("tune", "search a detector's hyper-parameters (Optuna) on validation images, never the test split; "
     "writes best.yaml for fit --config", add_tune_arguments),
]


class _OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error on one line like every other error of the CLI (exit 2)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(2, f"anomalens: error: {command}{_one_line(message)} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="anomalens", description="Visual anomaly detection from normal images.")
    parser.add_argument("--version", action="version", version=f"anomalens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help, add_arguments in COMMANDS:
        add_arguments(sub.add_parser(name, help=help))

    return parser


def _on_sigterm(signum, frame) -> None:
    """SIGTERM: nothing staged is committed any more, and :class:`Terminated` is raised where the main thread is."""
    folders = sys.modules.get("anomalens.outputs.folders")  # not imported yet: nothing is staged (and no import here)
    if folders is not None:
        folders.request_stop()
    raise Terminated()


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def _os_error_message(exc: OSError) -> str:
    """``<path>: <problem>`` for an OSError (``<path> → <path2>`` for a rename)."""
    problem = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is None:
        return _one_line(problem)
    path = os.fsdecode(exc.filename)
    if exc.filename2 is not None:
        path += f" → {os.fsdecode(exc.filename2)}"
    return _one_line(f"{path}: {problem}")


def _configure_logging(args: argparse.Namespace) -> None:
    """The library's log (logger "anomalens") on stderr, one line per message: ``anomalens: warning: …``.

    Level: ``--log-level``, else warnings only on a terminal (where progress bars show) or with ``-q``, and
    INFO elsewhere (CI, Docker, systemd: stage starts and ends, progress every tenth, timings; see
    ``anomalens.progress``), where each line also carries the time.
    """
    import logging

    from anomalens.progress import on_terminal

    class StderrHandler(logging.StreamHandler):
        """Writes to whatever ``sys.stderr`` is at the time (redirected in tests, replaced by a daemon)."""

        @property
        def stream(self):  # type: ignore[override]
            return sys.stderr

        @stream.setter
        def stream(self, value) -> None:
            pass

    name = getattr(args, "log_level", None)
    if name is None:
        name = "warning" if getattr(args, "quiet", False) or on_terminal() else "info"
    level = getattr(logging, name.upper())
    logger = logging.getLogger("anomalens")
    handler = next((h for h in logger.handlers if getattr(h, "anomalens_cli", False)), None)
    if handler is None:
        handler = StderrHandler()
        handler.anomalens_cli = True  # type: ignore[attr-defined]
        handler.addFilter(lambda record: setattr(record, "levelname", record.levelname.lower()) or True)
        logger.addHandler(handler)
    timed = level <= logging.INFO and not on_terminal()
    handler.setFormatter(logging.Formatter(("%(asctime)s " if timed else "") + "anomalens: %(levelname)s: %(message)s",
                                           datefmt="%Y-%m-%d %H:%M:%S"))
    logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed on one line
        return exc.code if isinstance(exc.code, int) else 2
    _configure_logging(args)
    if os.environ.get("ANOMALENS_KEEP_FREED_MEMORY", "1") != "0":
        keep_freed_memory()  # big activations reused instead of page-faulted in per batch (allocator.py)
    previous = None
    with contextlib.suppress(ValueError):  # only the main thread can take signals
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if getattr(args, "workers", None) is not None:
            from anomalens.data import decoding_workers

            with decoding_workers(args.workers):
                args.func(args)
        else:
            args.func(args)
    except (AnomalensError, ValueError, OSError) as exc:
        # Bad input and file-system errors (permission denied, read-only or full disk, a path that is a
        # file or a broken link): one line naming the path, exit 2, no traceback (ANOMALENS_DEBUG=1 shows it).
        if os.environ.get("ANOMALENS_DEBUG"):
            raise
        message = _os_error_message(exc) if isinstance(exc, OSError) and not isinstance(exc, AnomalensError) else _one_line(exc)
        print(f"anomalens: error: {message}", file=sys.stderr)
        return 2
    except MemoryError:
        # a limit the machine cannot meet (an address-space limit on an edge box, a huge frame): one line
        if os.environ.get("ANOMALENS_DEBUG"):
            raise
        print(f"anomalens: error: {args.command}: out of memory — fewer decoding workers (--workers 0), smaller "
              "images or batches, or a machine with more memory", file=sys.stderr)
        return 2
    except ImportError as exc:
        # a library that cannot load (a missing optional package, or torch's shared objects refused by an
        # address-space limit: "failed to map segment")
        if os.environ.get("ANOMALENS_DEBUG"):
            raise
        print(f"anomalens: error: {args.command}: cannot load a library ({_one_line(exc)})", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        # an image-decoding worker died (fit / test / calibrate: noticed wherever the main thread was)
        from anomalens.data.torch_dataset import worker_death

        death = worker_death(exc)
        if death is None or os.environ.get("ANOMALENS_DEBUG"):
            raise
        print(f"anomalens: error: {death}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anomalens: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("anomalens: terminated", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
