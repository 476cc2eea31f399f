"""``anomalens export`` and ``verify-export``: one inference graph of a run, and its check against torch."""

from __future__ import annotations

import argparse

from anomalens.commands.options import add_log_arguments


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder (anomalens fit)")
    p.add_argument("--format", default="onnx", help="onnx (opset 17) or openvino (IR)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                   help="fp32 (default); fp16: OpenVINO weights in float16 (half the file); int8: post-training "
                        "quantisation of the network's convolutions, calibrated on the run's training images")
    p.add_argument("--calibration", nargs="+", metavar="IMAGES",
                   help="int8: normal image files / folders to calibrate on instead of the run's training images")
    p.add_argument("-o", "--output", required=True, help="export folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    add_log_arguments(p)
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> None:
    from anomalens.export import export_run

    out = export_run(args.run, args.output, format=args.format, overwrite=args.overwrite, precision=args.precision,
                     calibration=args.calibration)
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    print(f"exported {args.run} as {args.format} {args.precision} → {out} ({', '.join(files)})")


def add_verify_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("export", help="folder written by 'anomalens export'")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("--run", help="the exported run folder (default: the one named in export.json)")
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"], default=None,
                   help="default: onnxruntime for ONNX exports, openvino for OpenVINO ones")
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest relative difference of scores and maps accepted (default: the export's precision's "
                        "rule: 1e-4 for fp32; for fp16 / int8 differences are reported and labels and AUROC decide)")
    add_log_arguments(p)
    p.set_defaults(func=run_verify_export)


def run_verify_export(args: argparse.Namespace) -> None:
    """The export against the torch model of its run (torch is imported here: it is the reference)."""
    from anomalens.export import ExportMismatchError, verify_export

    r = verify_export(args.export, args.images, run_dir=args.run, runtime=args.runtime, tolerance=args.tolerance)
    print(f"{r['detector']} ({r['precision']}) on {r['n_images']} images, {r['runtime']} vs torch:")
    print(f"  scores: max |diff| {r['scores_abs']:.3g}, mean |diff| {r['scores_mean_abs']:.3g}, "
          f"max relative {r['scores_rel']:.3g}")
    if r["maps_abs"] or r["maps_rel"]:
        print(f"  maps:   max |diff| {r['maps_abs']:.3g}, max relative {r['maps_rel']:.3g} (to each map's largest value)")
    for flip in r["flips"]:
        print(f"  label flips: {flip['image']}: torch {flip['torch_label']} (score {flip['torch_score']:.6g}), "
              f"export {flip['export_label']} (score {flip['export_score']:.6g})")
    print(f"  labels: {len(r['flips'])} of {r['n_images']} flipped ({r['flip_fraction']:.1%})")
    if r["auroc_change"] is not None:
        print(f"  AUROC: torch {r['auroc_torch']:.4f}, export {r['auroc_export']:.4f} (change {r['auroc_change']:+.4f})")
    else:
        print("  AUROC: not computed (the images are not in good/ and defect sub-folders of what was given)")
    if not r["ok"]:
        raise ExportMismatchError(
            f"the export disagrees with the torch model beyond its {r['precision']} tolerance ({r['parity']}): "
            f"{len(r['flips'])} label(s) flipped, largest relative difference {max(r['scores_rel'], r['maps_rel']):.3g}"
            + (f", AUROC change {r['auroc_change']:+.4f}" if r["auroc_change"] is not None else ""))
    print(f"  OK: within the tolerance of {r['precision']} ({r['parity']})")
