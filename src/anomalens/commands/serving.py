"""``anomalens serve``: a run or an export over HTTP (``anomalens.serve``): its options and its start."""

from __future__ import annotations

import argparse
import os
import sys

from anomalens.commands.options import add_device_argument, add_log_level_argument
from anomalens.errors import AnomalensError


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The service's options; its limits (timeouts, sizes, connections) come from ``anomalens.serve.settings``."""
    from anomalens.serve.settings import add_serve_arguments as add_limit_arguments

    p.add_argument("model", metavar="RUN_OR_EXPORT", help="a run folder (torch) or a folder written by 'anomalens export'")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--runtime", choices=["torch", "onnxruntime", "openvino"], default=None,
                   help="default: torch for a run, the export's own runtime for an export")
    add_device_argument(p, "torch runtime: where to run")
    p.add_argument("--token", default=None,
                   help="require 'Authorization: Bearer TOKEN' (default: $ANOMALENS_TOKEN; prefer the variable, "
                        "a command line is visible to other users)")
    add_limit_arguments(p)
    p.add_argument("--watch", default=None, metavar="SOURCE",
                   help="also score what SOURCE delivers, as 'anomalens watch' does, while serving: a hot folder, a "
                        "video file, a stream URL or camera:N (its verdicts join the history and /metrics)")
    p.add_argument("--sink", action="append", default=None, metavar="SPEC",
                   help="--watch: where its verdicts go (repeatable; default jsonl = stdout; see 'anomalens watch --help')")
    p.add_argument("-q", "--quiet", action="store_true", help="no access log")
    add_log_level_argument(p)
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> None:
    """Serve a run or an export over HTTP (REST API + operator page): ``anomalens.serve``."""
    from anomalens.serve.settings import settings_from_args

    settings = settings_from_args(args, os.environ.get("ANOMALENS_TOKEN"))  # one line for a bad value, first
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise AnomalensError("anomalens serve needs FastAPI and uvicorn: pip install 'anomalens[serve]'") from None
    from anomalens.serve.app import create_app
    from anomalens.serve.inference import load_served_model
    from anomalens.serve.server import bind_socket, make_server

    if args.sink and not args.watch:
        raise AnomalensError("--sink sends the verdicts of --watch SOURCE; give --watch too")
    model = load_served_model(args.model, runtime=args.runtime, device=args.device)
    watch = {"source": args.watch, "sinks": args.sink or ["jsonl"]} if args.watch else None
    app = create_app(model, settings=settings, watch=watch)
    sock = bind_socket(settings.host, settings.port)  # a port in use: one line, before the banner
    if not settings.loopback and settings.token is None:
        print(f"anomalens: warning: serving on {settings.host} without a token: anyone who reaches this port can use "
              "the model (set ANOMALENS_TOKEN or --token)", file=sys.stderr)
    print(f"anomalens: serving {model.name} ({model.runtime}) from {args.model} on {settings.url}/ "
          f"(API reference: /docs){'; a bearer token is required' if settings.token else ''}", file=sys.stderr)
    try:
        make_server(app, settings, log_level="warning" if args.quiet else "info").run(sockets=[sock])
    finally:
        sock.close()
