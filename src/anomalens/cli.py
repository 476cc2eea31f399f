"""Command line: anomalens fit | test | predict | calibrate | demo | list.

Bad input ends with one line ``anomalens: error: <what, where>`` and exit status 2; nothing
half-written is left behind (see ``anomalens.workflow``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from anomalens.version import __version__
from anomalens.allocator import keep_freed_memory
from anomalens.errors import AnomalensError


def _parse_param(text: str) -> tuple[str, Any]:
    """``key=value`` with value read as JSON when it parses (numbers, lists, null), else as a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().replace("-", "_"), value


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got '{text}'")
    return value


def _fit_params(args: argparse.Namespace) -> dict[str, Any]:
    params = dict(args.param or [])
    for key in ("backbone", "weights", "image_size", "batch_size", "seed", "device"):
        value = getattr(args, key, None)
        if value is not None:
            params[key] = value
    return params


def _print_metrics(metrics: dict[str, Any]) -> None:
    keys = ["image_auroc", "pixel_auroc", "aupro", "threshold", "tpr", "tnr", "balanced_accuracy", "images_per_second"]
    undefined = metrics.get("undefined") or {}
    parts = []
    for k in keys:
        value = metrics.get(k, "absent")
        if value == "absent":
            continue
        if value is None or (isinstance(value, float) and value != value):  # NaN: undefined on this test set
            parts.append(f"{k}=undefined ({undefined.get(k, 'not computable on this test set')})")
        else:
            parts.append(f"{k}={value:.4g}" if isinstance(value, float) else f"{k}={value}")
    print("  ".join(parts))


def cmd_fit(args: argparse.Namespace) -> None:
    from anomalens.workflow import fit_run

    detector = fit_run(args.model, args.data, args.output, _fit_params(args), overwrite=args.overwrite, progress=not args.quiet)
    print(f"fitted {detector.name} on {args.data} → {args.output} (threshold {detector.threshold_:.4g}, {detector.decision_.description})")


def cmd_test(args: argparse.Namespace) -> None:
    from anomalens.workflow import test_run

    metrics = test_run(args.run, args.data, out_dir=args.output, device=args.device, progress=not args.quiet, report=not args.no_report)
    _print_metrics(metrics)
    out = Path(args.output or args.run)
    print(f"wrote {out / 'metrics.json'}" + ("" if args.no_report else f" and {out / 'report.html'}"))


def cmd_predict(args: argparse.Namespace) -> None:
    from anomalens.workflow import predict_images

    heatmaps = "none" if args.no_heatmaps else args.heatmaps
    rows = predict_images(args.run, args.images, args.output, device=args.device, overwrite=args.overwrite,
                          heatmaps=heatmaps, progress=not args.quiet, resume=args.resume, skip_bad=args.skip_bad,
                          workers=args.workers, runtime=args.runtime)
    flagged = sum(r["anomalous"] for r in rows)
    errors = Path(args.output) / "errors.csv"
    bad = f"; {sum(1 for _ in open(errors)) - 1} unreadable images listed in {errors}" if errors.is_file() else ""
    print(f"{len(rows)} images scored, {flagged} anomalous → {Path(args.output) / 'predictions.csv'}{bad}")


def cmd_calibrate(args: argparse.Namespace) -> None:
    from anomalens.workflow import calibrate_run

    info = calibrate_run(args.run, args.data, method=args.method, clear_border=args.clear_border, device=args.device, progress=not args.quiet)
    rule = f"min_area {info['min_area']} px, pixel threshold {info['pixel_threshold']:.4g}" if args.method == "area" else f"threshold {info['threshold']:.4g}"
    print(f"{rule} ({info['note']})")


def cmd_demo(args: argparse.Namespace) -> None:
    from anomalens.demo import run_demo

    run_demo(args.output, model=args.model, sources=args.sources, overwrite=args.overwrite, progress=not args.quiet)


def cmd_list(args: argparse.Namespace) -> None:
    from anomalens.catalog import describe_detector, list_detectors

    if args.model:
        cmd_params(args)
        return
    for name in list_detectors():
        info = describe_detector(name)
        print(f"{name:14s} {'maps' if info['localizes'] else 'image-level':11s} {info['summary']}")


def cmd_params(args: argparse.Namespace) -> None:
    """The hyper-parameter table of one detector, from its declaration (what ``-p KEY=VALUE`` accepts)."""
    from anomalens.catalog import describe_detector

    info = describe_detector(args.model)
    print(f"{info['name']}: {info['summary']}")
    rows = [("parameter", "default", "accepts", "meaning"), *info["params"]]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])


def cmd_export(args: argparse.Namespace) -> None:
    from anomalens.export import export_run

    out = export_run(args.run, args.output, format=args.format, overwrite=args.overwrite)
    files = sorted(p.name for p in out.iterdir())
    print(f"exported {args.run} as {args.format} → {out} ({', '.join(files)})")


def cmd_verify_export(args: argparse.Namespace) -> None:
    from anomalens.export import ExportMismatchError, verify_export

    r = verify_export(args.export, args.images, run_dir=args.run, runtime=args.runtime, tolerance=args.tolerance)
    print(f"{r['detector']} on {r['n_images']} images, {r['runtime']} vs torch:")
    print(f"  scores: max |diff| {r['scores_abs']:.3g}, max relative {r['scores_rel']:.3g}")
    if r["maps_abs"] or r["maps_rel"]:
        print(f"  maps:   max |diff| {r['maps_abs']:.3g}, max relative {r['maps_rel']:.3g} (to each map's largest value)")
    for flip in r["flips"]:
        print(f"  label flips: {flip['image']}: torch {flip['torch_label']} (score {flip['torch_score']:.6g}), "
              f"export {flip['export_label']} (score {flip['export_score']:.6g})")
    if not r["ok"]:
        raise ExportMismatchError(
            f"the export disagrees with the torch model: {len(r['flips'])} label(s) flipped, largest relative "
            f"difference {max(r['scores_rel'], r['maps_rel']):.3g} (tolerance {r['tolerance']:g})")
    print(f"  OK: within the tolerance {r['tolerance']:g}, no label flipped")


def cmd_serve(args: argparse.Namespace) -> None:
    """Serve a run or an export over HTTP (REST API + operator page): ``anomalens.serve``."""
    import ipaddress

    from anomalens.serve.app import create_app
    from anomalens.serve.inference import load_served_model

    try:
        import uvicorn
    except ImportError:
        raise AnomalensError("anomalens serve needs FastAPI and uvicorn: pip install 'anomalens[serve]'") from None
    token = args.token or os.environ.get("ANOMALENS_TOKEN") or None
    model = load_served_model(args.model, runtime=args.runtime, device=args.device)
    app = create_app(model, token=token, max_upload_bytes=int(args.max_upload_mb * 1e6), max_batch=args.max_batch,
                     max_wait_ms=args.max_wait_ms)
    try:
        local = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        local = args.host == "localhost"
    if not local and token is None:
        print(f"anomalens: warning: serving on {args.host} without a token: anyone who reaches this port can use the "
              "model (set ANOMALENS_TOKEN or --token)", file=sys.stderr)
    print(f"anomalens: serving {model.name} ({model.runtime}) from {args.model} on http://{args.host}:{args.port}/ "
          f"(API reference: /docs){'; a bearer token is required' if token else ''}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info",
                limit_concurrency=args.max_connections, timeout_graceful_shutdown=5)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomalens", description="Visual anomaly detection from normal images.")
    parser.add_argument("--version", action="version", version=f"anomalens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="where to run (default: auto = CUDA if available)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        p.add_argument("--workers", type=_workers, default=None, metavar="N",
                       help="image-decoding worker processes (default: from the CPU cores, min(8, cores - 1); "
                            "0 decodes in the main process)")

    p = sub.add_parser("fit", help="train a detector on the normal images of DATA (train/good)")
    p.add_argument("model", help="detector name (see 'anomalens list')")
    p.add_argument("data", help="MVTec-AD-layout category folder, a folder of normal images, or a one-class "
                               "protocol such as mnist:normal=7,8:abnormal=2 or fashion-mnist:abnormal=0")
    p.add_argument("-o", "--output", required=True, help="run folder to create")
    p.add_argument("--backbone", help="feature backbone (default efficientnet_lite0; any timm name with internet)")
    p.add_argument("--weights", help="local backbone weights file (.pth / .safetensors), or 'random'")
    p.add_argument("--image-size", type=int, dest="image_size", help="input size in pixels (default 256)")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--seed", type=int)
    p.add_argument("-p", "--param", action="append", type=_parse_param, metavar="KEY=VALUE",
                   help="any detector hyper-parameter, e.g. -p n_features=100 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    common(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("test", help="evaluate a run on the test split of DATA; writes metrics.json and report.html")
    p.add_argument("run")
    p.add_argument("data", help="as for fit (its test split is used)")
    p.add_argument("-o", "--output", help="where to write the report (default: the run folder)")
    p.add_argument("--no-report", action="store_true", help="metrics.json only, no plots")
    common(p)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("predict", help="score new images; writes predictions.csv/.jsonl, heatmaps and masks")
    p.add_argument("run", help="a run folder (anomalens fit) or an export folder (anomalens export)")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--heatmaps", choices=["anomalous", "all", "none"], default="anomalous",
                   help="heatmap overlay + mask for the flagged images (default), every image, or none")
    p.add_argument("--no-heatmaps", action="store_true", help="same as --heatmaps none")
    p.add_argument("--runtime", choices=["torch", "onnxruntime", "openvino"], default=None,
                   help="what runs the model: torch for a run folder (default), onnxruntime / openvino for a "
                        "folder written by 'anomalens export' (default: its format's runtime)")
    p.add_argument("--resume", action="store_true",
                   help="continue a predict into OUTPUT that stopped (crash, bad image, Ctrl-C) without redoing its images")
    p.add_argument("--skip-bad", action="store_true",
                   help="list unreadable images in OUTPUT/errors.csv and go on (default: stop at the first, keeping "
                        "the results so far)")
    p.add_argument("--overwrite", action="store_true")
    common(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("calibrate", help="set the run's threshold on labelled data (test split of DATA)")
    p.add_argument("run")
    p.add_argument("data")
    p.add_argument("--method", choices=["f1", "area"], default="f1",
                   help="f1: F1-optimal image threshold; area: the seed's minimum defect area + pixel threshold")
    p.add_argument("--clear-border", action="store_true", help="area method: ignore regions touching the image border")
    common(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("demo", help="build synthetic categories from real photos, fit, test and write reports")
    p.add_argument("-o", "--output", default="anomalens-demo")
    p.add_argument("--model", default="padim")
    p.add_argument("--sources", nargs="+", default=None, help="synthetic categories (default: brick coffee)")
    p.add_argument("--overwrite", action="store_true")
    common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("list", help="list the available detectors (with MODEL: its hyper-parameters)")
    p.add_argument("model", nargs="?", help="a detector name: print its hyper-parameters, defaults and meanings")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("export", help="export a fitted run as one inference graph (ONNX or OpenVINO) + export.json")
    p.add_argument("run")
    p.add_argument("--format", default="onnx", help="onnx (opset 17) or openvino (IR, float32)")
    p.add_argument("-o", "--output", required=True, help="export folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("verify-export", help="compare an export with the torch model on real images")
    p.add_argument("export", help="folder written by 'anomalens export'")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("--run", help="the exported run folder (default: the one named in export.json)")
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"], default=None,
                   help="default: onnxruntime for ONNX exports, openvino for OpenVINO ones")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest relative difference of scores and maps accepted (default 1e-4)")
    p.set_defaults(func=cmd_verify_export)

    p = sub.add_parser("params", help="a detector's hyper-parameters: defaults, accepted values, meanings")
    p.add_argument("model", help="detector name (see 'anomalens list')")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("serve", help="serve a run or an export over HTTP: REST API, operator page at /, docs at /docs")
    p.add_argument("model", metavar="RUN_OR_EXPORT", help="a run folder (torch) or a folder written by 'anomalens export'")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--runtime", choices=["torch", "onnxruntime", "openvino"], default=None,
                   help="default: torch for a run, the export's own runtime for an export")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="torch runtime: where to run")
    p.add_argument("--token", default=None,
                   help="require 'Authorization: Bearer TOKEN' (default: $ANOMALENS_TOKEN; prefer the variable, "
                        "a command line is visible to other users)")
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="largest request body in MB (413 beyond)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="largest batch the model runs (micro-batching; default: the run's batch_size)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill (ms)")
    p.add_argument("--max-connections", type=int, default=64, help="connections served at once (503 beyond)")
    p.add_argument("-q", "--quiet", action="store_true", help="no access log")
    p.set_defaults(func=cmd_serve)
    return parser


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that staging folders are removed on the way out."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated()


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


def _log_warnings_as_lines() -> None:
    """The library's warnings (logger "anomalens") as one line each on stderr: ``anomalens: warning: …``."""
    import logging

    logger = logging.getLogger("anomalens")
    if not any(getattr(h, "anomalens_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.anomalens_cli = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("anomalens: %(levelname)s: %(message)s"))
        handler.addFilter(lambda record: setattr(record, "levelname", record.levelname.lower()) or True)
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _log_warnings_as_lines()
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
    except RuntimeError as exc:
        if "DataLoader worker" not in str(exc) or os.environ.get("ANOMALENS_DEBUG"):
            raise
        # an image-decoding worker died (fit / test / calibrate: noticed wherever the main thread was)
        print(f"anomalens: error: an image-decoding worker process died ({_one_line(exc)}); the machine may be out "
              "of memory — rerun with fewer workers (--workers N, 0 decodes in the main process)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anomalens: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("anomalens: terminated", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
