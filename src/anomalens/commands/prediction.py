"""``anomalens predict``: score new images with a run (torch) or an export (ONNX Runtime / OpenVINO)."""

from __future__ import annotations

import argparse
from pathlib import Path

from anomalens.commands.options import RAY_ADDRESS_HELP, add_common_arguments
from anomalens.errors import ConfigError


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
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
    add_common_arguments(p)
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> None:
    if args.engine == "ray":
        predict_on_ray(args)
        return
    for option, value in (("--address", args.address), ("--format parquet", args.format == "parquet")):
        if value:
            raise ConfigError(f"{option} is an option of --engine ray (the local predict streams CSV + JSONL)")
    from anomalens.workflow import predict_images

    heatmaps = "none" if args.no_heatmaps else (args.heatmaps or "anomalous")
    rows = predict_images(args.run, args.images, args.output, device=args.device, overwrite=args.overwrite,
                          heatmaps=heatmaps, progress=not args.quiet, resume=args.resume, skip_bad=args.skip_bad,
                          workers=args.workers, runtime=args.runtime)
    flagged = sum(r["anomalous"] for r in rows)
    print(f"{len(rows)} images scored, {flagged} anomalous → {Path(args.output) / 'predictions.csv'}{_unreadable(args.output)}")


def predict_on_ray(args: argparse.Namespace) -> None:
    """predict --engine ray: anomalens.distributed.predict_with_ray (scores only: no heatmaps, no --resume)."""
    if args.resume:
        raise ConfigError("--resume is not an option of --engine ray: Ray re-runs failed work itself and nothing is "
                          "written before the job is complete")
    if args.heatmaps not in (None, "none"):
        raise ConfigError(f"--heatmaps {args.heatmaps}: --engine ray writes scores and labels only; draw the heatmaps "
                          "of the flagged images with the local predict")
    from anomalens.distributed.ray_predict import predict_with_ray

    rows = predict_with_ray(args.run, args.images, args.output, address=args.address, workers=args.workers,
                            runtime=args.runtime, device=args.device, output_format=args.format,
                            overwrite=args.overwrite, skip_bad=args.skip_bad, progress=not args.quiet)
    flagged = sum(r["anomalous"] for r in rows)
    print(f"{len(rows)} images scored on Ray, {flagged} anomalous → "
          f"{Path(args.output) / f'predictions.{args.format}'}{_unreadable(args.output)}")


def _unreadable(output: str) -> str:
    """'; N unreadable images listed in OUTPUT/errors.csv', or '' when every image was read."""
    errors = Path(output) / "errors.csv"
    if not errors.is_file():
        return ""
    with open(errors, encoding="utf-8") as rows:
        count = sum(1 for _ in rows) - 1
    return f"; {count} unreadable images listed in {errors}"
