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
from typing import Any, NoReturn, Sequence

from anomalens.version import __version__
from anomalens.allocator import keep_freed_memory
from anomalens.errors import AnomalensError, ConfigError

RAY_ADDRESS_HELP = ("--engine ray: the Ray cluster (HOST:PORT of its head, ray://HOST:10001, or auto; default "
                    "$RAY_ADDRESS, else a local cluster on this machine)")


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


def _image_size(text: str) -> int | list[int]:
    """``N`` (square) or ``HxW`` (height x width, also ``H,W``) → 256 or [224, 320]."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW in pixels (e.g. 256 or 224x320), got '{text}'")
    return sizes[0] if len(sizes) == 1 else sizes


def _read_config(path: str, model: str) -> dict[str, Any]:
    """Hyper-parameters from a YAML or JSON file: a mapping with the keys of ``-p`` (optionally under
    ``params:``), or a run's ``detector.json`` (fitting from it reproduces that run)."""
    import yaml  # JSON is YAML too

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML or JSON{line}: {getattr(exc, 'problem', None) or exc}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping of hyper-parameters (KEY: VALUE), got {type(config).__name__}")
    named = config.get("detector", config.get("model"))
    if named is not None and named != model:
        raise ConfigError(f"{path}: is a config of detector '{named}', not of '{model}'")
    if "params" in config:
        config = config["params"]
        if not isinstance(config, dict):
            raise ConfigError(f"{path}: 'params' must be a mapping of hyper-parameters")
    else:
        config = {k: v for k, v in config.items() if k not in ("detector", "model")}
    return {str(k).replace("-", "_"): v for k, v in config.items()}


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got '{text}'")
    return value


def _fit_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in args.param or []:  # the command line overrides --config; twice on it is an error
        if key in params and params[key] != value:
            raise ConfigError(f"-p {key} is given twice ({params[key]!r} and {value!r}); give it once")
        params[key] = value
    for key in ("backbone", "weights", "image_size", "batch_size", "seed", "device"):
        value = getattr(args, key, None)
        if value is None:
            continue
        if key in params and params[key] != value:
            option = "--" + key.replace("_", "-")
            raise ConfigError(f"{key} is given twice, as {option} {value} and as -p {key}={params[key]!r}; give it once")
        params[key] = value
    config = _read_config(args.config, args.model) if getattr(args, "config", None) else {}
    return {**config, **params}


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """DATA's layout and the labelled-folder form of DATA (fit, test, calibrate)."""
    p.add_argument("--layout", metavar="NAME",
                   help="read DATA as this layout instead of recognising it: mvtec, mvtec_ad2, mvtec_loco, visa, "
                        "btad or folder")
    p.add_argument("--normal", metavar="DIR", help="instead of DATA: a folder of normal training images")
    p.add_argument("--abnormal", nargs="+", default=[], metavar="DIR",
                   help="folders of anomalous test images, the defect type being the folder name")
    p.add_argument("--test-normal", dest="test_normal", metavar="DIR", help="a folder of normal test images")
    p.add_argument("--masks", metavar="DIR",
                   help="masks of the --abnormal images: <stem>.png or <stem>_mask.png in DIR/<defect>/ or DIR/")


def _data(args: argparse.Namespace) -> Any:
    """DATA as the workflow takes it: the argument itself, or a DatasetSource carrying the data options."""
    from anomalens.data.layouts import data_source

    return data_source(args.data, layout=args.layout, normal=args.normal, abnormal=args.abnormal,
                       test_normal=args.test_normal, masks=args.masks)


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

    data = _data(args)
    engine = _fit_engine(args)
    if engine == "ray":
        from anomalens.distributed.sharded_fit import fit_run_on_ray

        detector = fit_run_on_ray(args.model, data, args.output, _fit_params(args), shards=args.shards,
                                  address=args.address, overwrite=args.overwrite, progress=not args.quiet)
    elif engine == "ddp":
        from anomalens.distributed.ddp import fit_run_data_parallel

        detector = fit_run_data_parallel(args.model, data, args.output, _fit_params(args), overwrite=args.overwrite,
                                         resume=args.resume, progress=not args.quiet)
        if detector is None:  # a rank other than 0: rank 0 writes the run and says so
            return
    else:
        detector = fit_run(args.model, data, args.output, _fit_params(args), overwrite=args.overwrite, progress=not args.quiet)
    print(f"fitted {detector.name} on {data} → {args.output} (threshold {detector.threshold_:.4g}, {detector.decision_.description})")


def _fit_engine(args: argparse.Namespace) -> str:
    """fit's engine: --engine, else ddp when torchrun started this process, else local; options of another
    engine are refused."""
    from anomalens.distributed.ddp import launched_by_torchrun

    engine = args.engine or ("ddp" if launched_by_torchrun() else "local")
    for option, value, needs in (("--shards", args.shards, "ray"), ("--address", args.address, "ray"),
                                 ("--resume", args.resume, "ddp")):
        if value and engine != needs:
            raise ConfigError(f"{option} is an option of --engine {needs} (this fit runs with --engine {engine})")
    return engine


def cmd_test(args: argparse.Namespace) -> None:
    from anomalens.workflow import test_run

    metrics = test_run(args.run, _data(args), out_dir=args.output, device=args.device, progress=not args.quiet, report=not args.no_report)
    _print_metrics(metrics)
    out = Path(args.output or args.run)
    print(f"wrote {out / 'metrics.json'}" + ("" if args.no_report else f" and {out / 'report.html'}"))


def cmd_predict(args: argparse.Namespace) -> None:
    from anomalens.workflow import predict_images

    if args.engine == "ray":
        _predict_on_ray(args)
        return
    for option, value in (("--address", args.address), ("--format parquet", args.format == "parquet")):
        if value:
            raise ConfigError(f"{option} is an option of --engine ray (the local predict streams CSV + JSONL)")
    heatmaps = "none" if args.no_heatmaps else (args.heatmaps or "anomalous")
    rows = predict_images(args.run, args.images, args.output, device=args.device, overwrite=args.overwrite,
                          heatmaps=heatmaps, progress=not args.quiet, resume=args.resume, skip_bad=args.skip_bad,
                          workers=args.workers, runtime=args.runtime)
    flagged = sum(r["anomalous"] for r in rows)
    errors = Path(args.output) / "errors.csv"
    bad = f"; {sum(1 for _ in open(errors)) - 1} unreadable images listed in {errors}" if errors.is_file() else ""
    print(f"{len(rows)} images scored, {flagged} anomalous → {Path(args.output) / 'predictions.csv'}{bad}")


def _predict_on_ray(args: argparse.Namespace) -> None:
    """predict --engine ray: anomalens.distributed.predict_with_ray (scores only: no heatmaps, no --resume)."""
    from anomalens.distributed.ray_predict import predict_with_ray

    if args.resume:
        raise ConfigError("--resume is not an option of --engine ray: Ray re-runs failed work itself and nothing is "
                          "written before the job is complete")
    if args.heatmaps not in (None, "none"):
        raise ConfigError(f"--heatmaps {args.heatmaps}: --engine ray writes scores and labels only; draw the heatmaps "
                          "of the flagged images with the local predict")
    rows = predict_with_ray(args.run, args.images, args.output, address=args.address, workers=args.workers,
                            runtime=args.runtime, device=args.device, output_format=args.format,
                            overwrite=args.overwrite, skip_bad=args.skip_bad, progress=not args.quiet)
    flagged = sum(r["anomalous"] for r in rows)
    errors = Path(args.output) / "errors.csv"
    bad = f"; {sum(1 for _ in open(errors)) - 1} unreadable images listed in {errors}" if errors.is_file() else ""
    print(f"{len(rows)} images scored on Ray, {flagged} anomalous → {Path(args.output) / f'predictions.{args.format}'}{bad}")


def cmd_calibrate(args: argparse.Namespace) -> None:
    from anomalens.workflow import calibrate_run

    info = calibrate_run(args.run, _data(args), method=args.method, clear_border=args.clear_border, device=args.device, progress=not args.quiet)
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


class _OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error on one line like every other error of the CLI (exit 2)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(2, f"anomalens: error: {command}{_one_line(message)} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="anomalens", description="Visual anomaly detection from normal images.")
    parser.add_argument("--version", action="version", version=f"anomalens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def log_level(p: argparse.ArgumentParser) -> None:
        p.add_argument("--log-level", choices=LOG_LEVELS, default=None,
                       help="what the log shows on stderr (default: warning on a terminal, where progress bars "
                            "show, and with -q; info elsewhere: stage starts and ends, progress, timings)")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="where to run (default: auto = CUDA if available)")
        p.add_argument("-q", "--quiet", action="store_true",
                       help="no progress bars or progress log lines; warnings and errors only")
        log_level(p)
        p.add_argument("--workers", type=_workers, default=None, metavar="N",
                       help="image-decoding worker processes (default: from the CPU cores, min(8, cores - 1); "
                            "0 decodes in the main process)")

    p = sub.add_parser("fit", help="train a detector on the normal images of DATA (train/good)")
    p.add_argument("model", help="detector name (see 'anomalens list')")
    p.add_argument("data", nargs="?", help="a dataset folder as it ships (MVTec AD, MVTec AD 2, MVTec LOCO, VisA, "
                                          "BTAD; see --layout), a folder of normal images, or a one-class "
                                          "protocol such as mnist:normal=7,8:abnormal=2 or fashion-mnist:abnormal=0")
    _add_data_options(p)
    p.add_argument("-o", "--output", required=True, help="run folder to create")
    p.add_argument("--config", metavar="FILE",
                   help="hyper-parameters from a YAML or JSON file (the keys of -p), or a run's detector.json to fit "
                        "that run again; options and -p on the command line override it")
    p.add_argument("--backbone", help="feature backbone (default efficientnet_lite0; any timm name with internet)")
    p.add_argument("--weights", help="local backbone weights file (.pth / .safetensors), or 'random'")
    p.add_argument("--image-size", type=_image_size, dest="image_size", metavar="N|HxW",
                   help="input size in pixels: N (square) or HxW, e.g. 224x320 (default 256)")
    p.add_argument("--batch-size", type=int, dest="batch_size", help="images per batch (default 16)")
    p.add_argument("--seed", type=int, help="random seed: the same seed and data give the same run (default 0)")
    p.add_argument("-p", "--param", action="append", type=_parse_param, metavar="KEY=VALUE",
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
    common(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("test", help="evaluate a run on the test split of DATA; writes metrics.json and report.html")
    p.add_argument("run", help="a run folder (anomalens fit)")
    p.add_argument("data", nargs="?", help="as for fit (its test split is used)")
    _add_data_options(p)
    p.add_argument("-o", "--output", help="where to write the report (default: the run folder)")
    p.add_argument("--no-report", action="store_true", help="metrics.json only, no plots")
    common(p)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("predict", help="score new images; writes predictions.csv/.jsonl, heatmaps and masks")
    p.add_argument("run", help="a run folder (anomalens fit) or an export folder (anomalens export)")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("-o", "--output", required=True,
                   help="folder to create for predictions.csv / .jsonl, errors.csv, heatmaps/ and masks/")
    p.add_argument("--heatmaps", choices=["anomalous", "all", "none"], default=None,
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
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUTPUT if an earlier anomalens predict wrote it (never a folder it did not write)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: decode and score on a Ray cluster (Ray Data actors, GPU "
                        "actors when it has GPUs; --workers N = scoring actors; scores and labels, no heatmaps; "
                        "pip install 'anomalens[ray]')")
    p.add_argument("--address", default=None, metavar="ADDR", help=RAY_ADDRESS_HELP)
    p.add_argument("--format", choices=["csv", "parquet"], default="csv",
                   help="--engine ray: predictions.csv + predictions.jsonl (default), or predictions.parquet for big jobs")
    common(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("calibrate", help="set the run's threshold on labelled data (test split of DATA)")
    p.add_argument("run", help="a run folder (anomalens fit); its decision rule is replaced")
    p.add_argument("data", nargs="?", help="as for fit (its test split is used, else its normal images)")
    _add_data_options(p)
    p.add_argument("--method", choices=["f1", "area"], default="f1",
                   help="f1: F1-optimal image threshold; area: the seed's minimum defect area + pixel threshold")
    p.add_argument("--clear-border", action="store_true", help="area method: ignore regions touching the image border")
    common(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("demo", help="build synthetic categories from real photos, fit, test and write reports")
    p.add_argument("-o", "--output", default="anomalens-demo",
                   help="folder to create for the data, runs and index.html (default anomalens-demo)")
    p.add_argument("--model", default="padim", help="detector to fit (default padim; see 'anomalens list')")
    p.add_argument("--sources", nargs="+", default=None, help="synthetic categories (default: brick coffee)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo folder")
    common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("list", help="list the available detectors (with MODEL: its hyper-parameters)")
    p.add_argument("model", nargs="?", help="a detector name: print its hyper-parameters, defaults and meanings")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("export", help="export a fitted run as one inference graph (ONNX or OpenVINO) + export.json")
    p.add_argument("run", help="a run folder (anomalens fit)")
    p.add_argument("--format", default="onnx", help="onnx (opset 17) or openvino (IR, float32)")
    p.add_argument("-o", "--output", required=True, help="export folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    log_level(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("verify-export", help="compare an export with the torch model on real images")
    p.add_argument("export", help="folder written by 'anomalens export'")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("--run", help="the exported run folder (default: the one named in export.json)")
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"], default=None,
                   help="default: onnxruntime for ONNX exports, openvino for OpenVINO ones")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest relative difference of scores and maps accepted (default 1e-4)")
    log_level(p)
    p.set_defaults(func=cmd_verify_export)

    p = sub.add_parser("params", help="a detector's hyper-parameters: defaults, accepted values, meanings")
    p.add_argument("model", help="detector name (see 'anomalens list')")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("serve", help="serve a run or an export over HTTP: REST API, operator page at /, docs at /docs")
    p.add_argument("model", metavar="RUN_OR_EXPORT", help="a run folder (torch) or a folder written by 'anomalens export'")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
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
    log_level(p)
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


LOG_LEVELS = ("debug", "info", "warning", "error")


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
    except _Terminated:
        print("anomalens: terminated", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
