"""Export a fitted run as one inference graph — ONNX or OpenVINO IR — with a JSON that says how to use it.

    anomalens export runs/hazelnut --format onnx -o exports/hazelnut
    export_run("runs/hazelnut", "exports/hazelnut", format="openvino")

What is exported is the detector's ``inference_module()`` (``anomalens.detector``): the very module that
``predict`` runs, traced once. It maps float32 images (N, C, H, W) in [0, 1] at the run's input size to
``scores`` (N,) and, for detectors that localise, ``maps`` (N, H, W); normalisation, feature extraction,
distances, upsampling, blur and the image score are inside it. The batch size N is dynamic.

The output folder holds:
- ``model.onnx`` (ONNX, opset ``ONNX_OPSET``; the manifest also sits in its ``metadata_props`` under
  ``anomalens``), or ``model.xml`` + ``model.bin`` (OpenVINO IR);
- ``export.json``, the manifest: detector name and parameters, the decision rule
  (``DecisionRule.to_dict()``), input size and channels, the preprocessing the caller must do (decode,
  colour, resize method), the anomalens version, the SHA-256 of the run's weights and of every file
  written, the ONNX opset, the ``precision`` (fp32, fp16, int8: ``anomalens.quantization``) and, for int8,
  the ``calibration`` images it was quantised with.

Before anything is written in place, the graph is run by its runtime on a batch of a different size than
the traced one and compared with the torch module (``check_tolerance``): a tracing problem (a batch size
baked into the graph, an operation the runtime computes differently) fails the export instead of giving
a silently different model. An fp16 / int8 graph is checked against torch on the calibration images (random ones for
fp16) under its precision's parity rule (``anomalens.inference.parity.PARITY``: labels, not raw score
differences). The folder is written by the output-folder protocol (``anomalens.outputs.folders``):
it appears whole or not at all; ``overwrite`` replaces only an earlier export (never a user's folder, the
run being exported or anything inside it), and a folder created meanwhile is never replaced.

Refused, with one line each (``anomalens.errors``): an unknown format, a missing optional package (the
message names the pip extra ``anomalens[export]``), an unfitted or tampered run (``load_detector``'s
checks), a detector whose inference is not a fixed graph (``Detector.export_refusal``: AnoGAN's latent
search, SPADE's retrieval, PatchCore with the approximate HNSW search).

The tracer is torch's TorchScript-based ONNX exporter (``dynamo=False``): it needs no extra package and
traces the modules as ``predict`` runs them; torch 2.14 still ships it (marked deprecated).
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from dataclasses import replace
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import numpy as np

from anomalens.errors import AnomalensError, ConfigError
from anomalens.exported import (EXPORT_FORMAT_VERSION, EXTRA, MANIFEST_FILE, SUMMARY_KEY, compare_outputs,
                                export_summary, load_export)
from anomalens.inference.parity import PARITY
from anomalens.outputs import staged_directory, write_text
from anomalens.outputs.folders import remove_stage
from anomalens.outputs.names import MARKER_FILE
from anomalens.progress import stage as logged_stage
from anomalens.quantization import (CALIBRATION_BATCH, PRECISIONS, calibration_images, onnx_int8, openvino_int8,
                                    precision_refusal)
from anomalens.version import __version__

EXPORT_FORMATS = ("onnx", "openvino")
ONNX_OPSET = 17
INPUT_NAME = "images"
# Largest relative difference accepted between the runtime and the torch module (see ``compare_outputs``).
DEFAULT_TOLERANCE = 1e-3
TRACE_BATCH = 2  # batch size the graph is traced with; the export check runs another one
_ONNX_SINGLE_FILE_LIMIT = 1_800_000_000  # bytes: above this the weights go to model.onnx.data (protobuf's 2 GiB)


class ExportMismatchError(AnomalensError):
    """An exported graph whose outputs differ from the torch model's beyond the tolerance."""


def require(package: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or ConfigError naming the pip extra that installs it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"{purpose} needs the optional package '{package}', which is not installed: {EXTRA}") from None


def preprocessing_description(channels: int, input_size: tuple[int, int]) -> dict[str, Any]:
    """What a caller must do to an image file before the graph: exactly ``anomalens.data``'s loading."""
    height, width = input_size
    return {
        "decode": "pixels as stored (EXIF orientation not applied); 8-bit values / 255, 16-bit / 65535; "
                  "alpha composited onto black (colour × alpha)",
        "color": ("grayscale: ITU-R 601-2 luma 0.299 R + 0.587 G + 0.114 B" if channels == 1
                  else "RGB; grey images replicated to 3 channels"),
        "resize": {
            "size": [height, width],
            "method": "bilinear, antialiased: the triangle filter widened by the scale factor when shrinking "
                      "(as Pillow's BILINEAR resampling; torch.nn.functional.interpolate(mode='bilinear', "
                      "antialias=True, align_corners=False)), in float32, then clamped to [0, 1]; "
                      "images already at the size are not resampled",
        },
        "layout": "NCHW float32 in [0, 1]; no mean/std normalisation outside the graph (it is inside)",
        "reference": "anomalens.exported.load_input (numpy + Pillow, no torch)",
    }


def export_run(run_dir: str | Path, output: str | Path, format: str = "onnx", overwrite: bool = False,
               tolerance: float = DEFAULT_TOLERANCE, progress: bool = True, precision: str = "fp32",
               calibration: Any = None) -> Path:
    """Export the fitted run in ``run_dir`` to the folder ``output`` (see the module docstring). Returns it.
    ``progress``: log each step (load, trace, convert, check) as it starts and ends, as ``fit`` does.
    ``precision``: fp32, fp16 or int8 (``anomalens.quantization``); ``calibration``: normal images (files,
    folders) to calibrate int8 on instead of the run's training images."""
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format '{format}'; use one of {', '.join(EXPORT_FORMATS)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    if calibration is not None and precision != "int8":
        raise ConfigError("calibration images are used by --precision int8 only")
    onnx = require("onnx", f"exporting to {format}")
    runtime = require("onnxruntime", "checking the ONNX export") if format == "onnx" else require("openvino", "exporting to openvino")
    if precision == "int8":
        require("onnxruntime", "quantising to int8") if format == "onnx" else require("nncf", "quantising to int8")
    output = Path(output)
    with staged_directory(output, overwrite=overwrite, kind="export", inputs=[run_dir]) as stage:
        _export_into(stage, run_dir, format, onnx, runtime, tolerance, progress, precision, calibration)
    return output


def _export_into(stage: Path, run_dir: str | Path, format: str, onnx: ModuleType, runtime: ModuleType,
                 tolerance: float, progress: bool, precision: str = "fp32", calibration: Any = None) -> None:
    """Trace, convert, describe and check the export in the staging folder ``stage``."""
    import torch

    from anomalens.catalog import load_detector
    from anomalens.persistence import file_sha256, read_config

    with logged_stage(f"export: load the run {run_dir}", enabled=progress):
        detector = load_detector(run_dir, device="cpu")  # ModelFileError for unfitted / tampered runs
    refusal = detector.export_refusal() or precision_refusal(detector.name, format, precision)
    if refusal:
        raise ConfigError(refusal)
    config = read_config(run_dir)
    channels, (height, width) = detector.image_channels, detector.input_size
    module = detector.inference_module().eval()
    output_names = ["scores", "maps"] if detector.localizes else ["scores"]
    manifest: dict[str, Any] = {
        "library": "anomalens",
        "kind": "export",
        "export_format_version": EXPORT_FORMAT_VERSION,
        "anomalens_version": __version__,
        "format": format,
        "onnx_opset": ONNX_OPSET,
        "detector": detector.name,
        "params": detector.params,
        "localizes": detector.localizes,
        "score_is_map_max": detector.score_is_map_max,
        "decision": detector.decision_.to_dict(),
        "input": {"name": INPUT_NAME, "shape": ["batch", channels, height, width], "dtype": "float32",
                  "range": [0.0, 1.0], "channels": channels, "height": height, "width": width},
        "outputs": [{"name": "scores", "shape": ["batch"], "dtype": "float32"}]
        + ([{"name": "maps", "shape": ["batch", height, width], "dtype": "float32"}] if detector.localizes else []),
        "preprocessing": preprocessing_description(channels, (height, width)),
        "weights_sha256": config.get("weights_sha256"),
        "source_run": str(Path(run_dir).resolve()),
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__, runtime.__name__: runtime.__version__},
        "precision": precision,
    }
    images = None
    if precision == "int8":
        with logged_stage("export: read the int8 calibration images", enabled=progress):
            images, manifest["calibration"] = calibration_images(
                run_dir, calibration, (height, width), channels, str(detector.params.get("decode", "exact")))
        quantizer = require("onnxruntime" if format == "onnx" else "nncf", "quantising to int8")
        manifest["exported_with"][quantizer.__name__] = quantizer.__version__
    elif precision == "fp16":  # checked on real normals where they still are: random pixels flip no label
        with logged_stage("export: read training images to check fp16 on", enabled=progress):
            images = _training_images_if_found(run_dir, (height, width), channels, detector)

    work = stage / ".trace"  # the tracer's own files (external weights of a large graph) stay out of the export
    work.mkdir()
    try:
        traced = work / "model.onnx"
        with logged_stage(f"export: trace {detector.name} to ONNX", enabled=progress):
            _trace_to_onnx(module, torch.rand(TRACE_BATCH, channels, height, width), traced, output_names)
        if format == "onnx":
            if precision == "int8":
                with logged_stage(f"export: quantise to int8 on {len(images)} calibration images", enabled=progress):
                    onnx_int8(traced, work / "int8.onnx", images)
                traced = work / "int8.onnx"
            _save_onnx_with_metadata(onnx, traced, stage / "model.onnx", manifest)
        else:
            ov = runtime
            with logged_stage("export: convert to OpenVINO IR", enabled=progress):
                ov_model = ov.convert_model(str(traced))
            if precision == "int8":
                with logged_stage(f"export: quantise to int8 on {len(images)} calibration images", enabled=progress):
                    ov_model = openvino_int8(ov_model, images)
            ov_model.set_rt_info(export_summary(manifest), [SUMMARY_KEY])  # read back by exported.read_manifest
            # fp16: weights stored as float16; the CPU plugin decompresses them to float32 when it compiles.
            ov.save_model(ov_model, str(stage / "model.xml"), compress_to_fp16=precision == "fp16")
    finally:
        remove_stage(work)
    files = sorted(name for name in os.listdir(stage) if name != MARKER_FILE)
    manifest["files"] = {name: file_sha256(stage / name) for name in files}
    write_text(stage / MANIFEST_FILE, json.dumps(manifest, indent=2, default=_json_default))
    with logged_stage(f"export: check the {format} graph against torch", enabled=progress):
        if precision == "fp32":
            _check_against_torch(stage, module, tolerance)
        else:
            _check_reduced_precision(stage, detector, precision, images)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (Path, tuple)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _trace_to_onnx(module: Any, example: Any, path: Path, output_names: list[str]) -> None:
    import torch

    dynamic = {name: {0: "batch"} for name in [INPUT_NAME, *output_names]}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter announces its deprecation and warns about Python values it records as
        # constants (shapes of the fixed input size); the export check below catches a wrong constant.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=[INPUT_NAME],
                          output_names=output_names, dynamic_axes=dynamic, opset_version=ONNX_OPSET,
                          do_constant_folding=True)


def _save_onnx_with_metadata(onnx: ModuleType, traced: Path, path: Path, manifest: dict[str, Any]) -> None:
    """Save the traced model at ``path`` with the manifest (without the file hashes, which depend on it) in
    its metadata_props; weights above protobuf's limit go to ``model.onnx.data`` beside it."""
    model = onnx.load(str(traced))
    for key, value in {SUMMARY_KEY: export_summary(manifest),
                       "anomalens_version": __version__, "detector": manifest["detector"]}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "anomalens"
    model.producer_version = __version__
    large = model.ByteSize() > _ONNX_SINGLE_FILE_LIMIT
    onnx.save_model(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                    location="model.onnx.data")


def _check_against_torch(folder: Path, module: Any, tolerance: float) -> None:
    """Run the written graph on a batch of another size than the traced one; ExportMismatchError if it differs."""
    import torch

    exported = load_export(folder)
    generator = torch.Generator().manual_seed(0)
    channels, (height, width) = exported.image_channels, exported.input_size
    images = torch.rand(TRACE_BATCH + 1, channels, height, width, generator=generator)
    with torch.inference_mode():
        reference = [t.float().numpy() for t in module(images)]
    got = exported.run_graph(images.numpy())
    report = compare_outputs(reference[0], got[0], reference[1] if len(reference) > 1 else None, got[1])
    if max(report["scores_rel"], report["maps_rel"]) > tolerance:
        raise ExportMismatchError(
            f"the {exported.runtime} graph differs from the torch model on a check batch (scores: max relative "
            f"difference {report['scores_rel']:.3g}, maps: {report['maps_rel']:.3g}; tolerance {tolerance}); "
            "nothing was written — please report this detector and its parameters"
        )


def _training_images_if_found(run_dir: str | Path, size: tuple[int, int], channels: int,
                              detector: Any) -> np.ndarray | None:
    """The run's training normals as int8 calibrates on, or None where they moved or changed (an fp16 export
    does not need them: it is then checked on random images, as before)."""
    try:
        return calibration_images(run_dir, None, size, channels, str(detector.params.get("decode", "exact")))[0]
    except AnomalensError:
        return None


def _check_reduced_precision(folder: Path, detector: Any, precision: str, images: np.ndarray | None) -> None:
    """An fp16 / int8 graph against torch on normal images (the run's training normals or the int8 calibration
    batch, else random ones): labels under the run's rule may flip on at most the precision's share of them
    (``PARITY``)."""
    import torch

    exported = load_export(folder)
    if images is None:
        generator = torch.Generator().manual_seed(0)
        channels, (height, width) = exported.image_channels, exported.input_size
        images = torch.rand(2 * CALIBRATION_BATCH, channels, height, width, generator=generator).numpy()
    with torch.inference_mode():
        reference = [t.float().numpy() for t in detector.inference_module()(torch.from_numpy(images))]
    got = exported.run(images)
    rule, decision = PARITY[precision], exported.decision_
    flips = int(np.sum(decision.labels(reference[0], reference[1] if len(reference) > 1 else None)
                       != decision.labels(*got)))
    if flips > rule.max_flip_fraction * len(images):
        raise ExportMismatchError(
            f"the {precision} {exported.runtime} graph flips {flips} of {len(images)} normal images' labels against "
            f"torch (at most {rule.max_flip_fraction:.0%} accepted); nothing was written — export it as fp32")


def verify_export(export_dir: str | Path, images: str | Path | list, run_dir: str | Path | None = None,
                  runtime: str | None = None, tolerance: float | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Run the export and the torch model on real images; return the differences, the flipped labels and,
    when the images have labels, the AUROC of each.

    ``images``: image files and/or folders; when every image sits in a sub-folder of what was given, the
    sub-folder names are labels (``good`` normal, any other anomalous: the MVTec test layout,
    ``data/brick/test``). ``run_dir``: the run that was exported (default: the one the manifest names); its
    weights must be those exported (same SHA-256). ``tolerance``: largest relative difference accepted
    (default: the export's precision's, ``anomalens.inference.parity.PARITY``).

    The result has ``scores_abs``, ``scores_rel``, ``maps_abs``, ``maps_rel`` (see ``compare_outputs``),
    ``scores_mean_abs``, ``flips`` (one dict per image whose label differs), ``flip_fraction``, ``auroc_torch``,
    ``auroc_export``, ``auroc_change`` (None without labels), ``n_images``, ``runtime``, ``precision``,
    ``tolerance``, ``parity`` (the rule, in words) and ``ok`` (within the precision's rule).
    """
    from anomalens.catalog import load_detector
    from anomalens.data import collect_images
    from anomalens.errors import ModelFileError
    from anomalens.exported import read_manifest
    from anomalens.metrics import image_auroc
    from anomalens.persistence import read_config

    manifest = read_manifest(export_dir)
    run_dir = Path(run_dir or manifest.get("source_run") or "")
    if read_config(run_dir).get("weights_sha256") != manifest.get("weights_sha256"):
        raise ModelFileError(f"{run_dir}: not the run this export was made from (its weights' SHA-256 differs from "
                             f"the one in {Path(export_dir) / MANIFEST_FILE}); pass the exported run")
    records = collect_images(images, label=0)
    paths = [record.source for record in records]
    labels = folder_labels([record.name for record in records])
    exported = load_export(export_dir, runtime)
    detector = load_detector(run_dir)
    with logged_stage(f"verify-export: torch on {len(records)} images", enabled=progress):
        reference = detector.predict(records, progress=progress)
    with logged_stage(f"verify-export: {exported.runtime} on {len(records)} images", enabled=progress):
        got = exported.predict(records, progress=progress)
    report: dict[str, Any] = compare_outputs(reference.scores, got.scores, reference.maps, got.maps)
    report["scores_mean_abs"] = float(np.mean(np.abs(np.asarray(got.scores, np.float64) - reference.scores)))
    report["flips"] = [
        {"image": str(paths[i]), "torch_label": int(reference.labels[i]), "export_label": int(got.labels[i]),
         "torch_score": float(reference.scores[i]), "export_score": float(got.scores[i])}
        for i in np.flatnonzero(reference.labels != got.labels)
    ]
    report["flip_fraction"] = len(report["flips"]) / max(len(paths), 1)
    auroc = (image_auroc(labels, reference.scores), image_auroc(labels, got.scores)) if labels is not None else None
    if auroc is not None and not all(np.isfinite(auroc)):
        auroc = None  # one class only: no ranking to compare
    report.update(auroc_torch=auroc and auroc[0], auroc_export=auroc and auroc[1],
                  auroc_change=auroc and auroc[1] - auroc[0])
    precision = manifest["precision"]
    rule = PARITY[precision]
    if tolerance is not None:
        rule = replace(rule, max_relative=tolerance)
    report.update(n_images=len(paths), runtime=exported.runtime, tolerance=rule.max_relative, detector=exported.name,
                  precision=precision, parity=rule.describe())
    within = rule.max_relative is None or max(report["scores_rel"], report["maps_rel"]) <= rule.max_relative
    ranked = (rule.max_auroc_change is None or report["auroc_change"] is None
              or abs(report["auroc_change"]) <= rule.max_auroc_change)
    report["ok"] = within and ranked and report["flip_fraction"] <= rule.max_flip_fraction
    return report


def folder_labels(names: list[str]) -> np.ndarray | None:
    """Labels read from the sub-folder each image sits in (``good`` → 0, any other → 1), or None unless every
    image sits in one (images named relative to the folder given, as ``collect_images`` names them)."""
    folders = [PurePosixPath(name).parent.name for name in names]
    if not folders or any(folder == "" for folder in folders):
        return None
    return np.array([0 if folder == "good" else 1 for folder in folders])
