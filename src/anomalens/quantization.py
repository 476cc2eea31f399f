"""Half-precision and INT8 versions of an exported graph: what ``anomalens export --precision`` does after the
float32 graph is traced.

    fp32  the traced graph as it is (the default; the same graph as before precisions existed);
    fp16  OpenVINO: weights stored as float16 (``compress_to_fp16``), decompressed to float32 when the CPU plugin
          compiles the graph — half the file, the same arithmetic. ONNX: refused (``onnx_fp16_refusal``);
    int8  post-training static quantisation, calibrated on the run's training normals: NNCF for OpenVINO
          (``nncf.quantize``), ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel weights) for ONNX.

What INT8 touches: only the networks (the backbone, the teacher / student, the auto-encoder: the operations inside
named sub-modules, ``is_layer``) — in OpenVINO where NNCF's patterns place quantisers within them (convolutions
with their fused bias and activation, residual additions), in ONNX their convolutions (``layer_convolutions``).
The anomaly score is a small difference between large features (a Mahalanobis distance, a nearest-neighbour
distance, a reconstruction error), and 8 bits cannot hold it: quantising the whole graph (distance, blur, map)
makes every score the same (measured on PaDiM: AUROC 0.5). Post-processing written in the inference module
itself — the map's Gaussian blur is a convolution too — stays in float32.

Calibration images are the run's training normals, re-read from the DATA its ``run.json`` names and checked
against the training images' SHA-256 recorded at fit time (``calibration_images``); another folder of normal
images may be given instead (``calibration=``). What was used is recorded in the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from anomalens.errors import ConfigError, DataError
from anomalens.inference.manifest import FORMAT_PRECISIONS, PRECISIONS
#: Largest number of training images the INT8 calibration reads (evenly spaced over the training set): NNCF's
#: and ONNX Runtime's range statistics settle well before; more only lengthens the export.
CALIBRATION_IMAGES = 64
CALIBRATION_BATCH = 8

#: Detectors whose INT8 export cannot meet the target (AUROC within 0.005 of fp32, ≤ 1 % label flips, ≥ 1.5× fp32
#: CPU throughput) on any CPU, with the reason measured by benchmarks/export_precision.py (results/export_precision/,
#: 'where the time goes'): Amdahl's bound 1 / (1 − the networks' convolution share) is below 1.5×. PaDiM and STPM
#: meet the target on the 2-core AVX-512 VNNI machine of that table (1.53× and 2.68× in its latest run), so they
#: are not listed.
INT8_REFUSALS: dict[str, str] = {
    "patchcore": ("77 % of its fp32 graph's time is the float32 nearest-neighbour search over the memory bank "
                  "(OpenVINO's counters, 256 px), so even free INT8 convolutions could not make it more than 1.3× "
                  "faster; export it as fp32, or fp16 for half the file"),
}


def precision_refusal(detector: str, format: str, precision: str) -> str | None:
    """One line saying why ``precision`` is not offered for this detector and format, or None."""
    if precision not in PRECISIONS:
        return f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}"
    if precision not in FORMAT_PRECISIONS[format]:
        return onnx_fp16_refusal()
    if precision == "int8" and detector in INT8_REFUSALS:
        return f"{detector}: --precision int8 is refused: {INT8_REFUSALS[detector]}"
    return None


def onnx_fp16_refusal() -> str:
    return ("--format onnx --precision fp16 is refused: ONNX Runtime's CPU provider lacks float16 kernels for most of "
            "these graphs' operations and casts around them (measured on PaDiM: slower than fp32); use --format "
            "openvino --precision fp16, or --precision int8")


# -- calibration ------------------------------------------------------------------------------------------------
def calibration_images(run_dir: str | Path, source: Any, input_size: tuple[int, int], channels: int,
                       decode: str, limit: int = CALIBRATION_IMAGES) -> tuple[np.ndarray, dict[str, Any]]:
    """The INT8 calibration batch (N, C, H, W) float32, preprocessed as ``predict`` does, and its description
    for the manifest. ``source``: None for the run's training normals (DATA in its ``run.json``, checked against
    the training images' SHA-256), else image files / folders of normal images."""
    from anomalens.data import collect_images
    from anomalens.inference.preprocess import load_input

    if source is None:
        records, described = _training_records(Path(run_dir))
    else:
        records = collect_images(source, label=0)
        described = {"source": "given", "images_given": len(records)}
    step = max(1, len(records) // limit)
    chosen = records[::step][:limit]
    batch = np.stack([load_input(r, input_size, channels, decode) for r in chosen]).astype(np.float32)
    return batch, {**described, "images": len(chosen)}


def _training_records(run_dir: Path) -> tuple[list, dict[str, Any]]:
    """The run's training images, as fit read them; ConfigError (one line) when they cannot be found again."""
    from anomalens.outputs.names import RUN_INFO_FILE
    from anomalens.provenance import file_list_sha256
    from anomalens.workflow.common import image_key, read_dataset

    info_path = run_dir / RUN_INFO_FILE
    try:
        info = json.loads(info_path.read_text())
        data = info["data"]
        recorded = info["provenance"]["training_images_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{run_dir}: its {RUN_INFO_FILE} does not name the training data (a run saved from Python "
                          "or fitted on an in-memory dataset); give normal images to calibrate INT8 on: "
                          "--calibration DATA (calibration= in Python)") from None
    try:
        train = read_dataset(data).train
    except (DataError, OSError) as exc:
        raise ConfigError(f"{run_dir}: its training data {data!s:.200} cannot be read any more ({exc}); give normal "
                          "images to calibrate INT8 on with --calibration DATA") from None
    if file_list_sha256([r.name for r in train], [image_key(r) for r in train]) != recorded:
        raise ConfigError(f"{run_dir}: the training images in {data!s:.200} are not those the run was fitted on "
                          "(their SHA-256 differs from run.json's); give normal images with --calibration DATA")
    return train, {"source": "training images", "data": str(data), "training_images_sha256": recorded}


def _batches(images: np.ndarray) -> list[np.ndarray]:
    return [images[i : i + CALIBRATION_BATCH] for i in range(0, len(images), CALIBRATION_BATCH)]


# -- which operations INT8 quantises ----------------------------------------------------------------------------
def is_layer(node_name: str) -> bool:
    """True for an operation inside a named sub-module (``/extractor/model/conv_stem/Conv``), False for one written
    in the inference module itself (``/Conv``: the map's blur): the tracer names nodes by module path."""
    return node_name.strip("/").count("/") >= 1


def layer_convolutions(names_and_types: list[tuple[str, str]], conv_types: tuple[str, ...]) -> list[str]:
    """The names of the networks' convolutions among (node name, op type) pairs."""
    return [name for name, kind in names_and_types if kind in conv_types and is_layer(name)]


# -- the converters -----------------------------------------------------------------------------------------------
def onnx_int8(source: Path, target: Path, calibration: np.ndarray) -> None:
    """``source`` (float32 ONNX) quantised into ``target``: QDQ, per-channel int8 weights, uint8 activations."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(source), load_external_data=False).graph
    convs = layer_convolutions([(n.name, n.op_type) for n in graph.node], ("Conv",))
    if not convs:
        raise ConfigError("--precision int8: this graph has no convolution layers to quantise; export it as fp32")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(_batches(calibration))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    import logging

    import onnxruntime

    # quantize_static advises through the root logger (which would install a handler on it) and its calibration
    # session through ONNX Runtime's C++ log: neither is ours to print.
    root, quiet = logging.getLogger(), logging.NullHandler()
    level = root.level
    root.addHandler(quiet)
    root.setLevel(logging.ERROR)
    onnxruntime.set_default_logger_severity(3)
    try:
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
                        nodes_to_quantize=convs)
    finally:
        root.setLevel(level)
        root.removeHandler(quiet)
        onnxruntime.set_default_logger_severity(2)


def openvino_int8(model: Any, calibration: np.ndarray) -> Any:
    """The OpenVINO model with its convolution layers quantised by NNCF, calibrated on ``calibration``."""
    import contextlib
    import io
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # nncf imports it: "No CUDA runtime"
    import nncf

    ops = [(op.get_friendly_name(), op.get_type_name()) for op in model.get_ordered_ops()]
    if not layer_convolutions(ops, ("Convolution", "GroupConvolution")):
        raise ConfigError("--precision int8: this graph has no convolution layers to quantise; export it as fp32")
    # Everything outside the networks stays float32 (module docstring). Inside them NNCF places its quantisers by
    # its own patterns (activations after the convolution + bias + activation it fuses, residual additions):
    # quantising only the convolutions' inputs cut the fused chains, and the CPU plugin then spent about as much
    # time re-laying and padding int8 tensors as the convolutions saved (256 px, benchmarks/export_precision.py:
    # PaDiM 1.29x fp32 -> 1.56x, STPM 1.44x -> 2.31x).
    # Matrix products stay float32 inside the networks too: there they are scorers (SimpleNet's discriminator,
    # CFlow's decoders), whose outputs are the score.
    ignored = nncf.IgnoredScope(names=sorted(name for name, kind in ops if not is_layer(name)
                                             and kind not in ("Parameter", "Constant", "Result")),
                                types=["MatMul"], validate=False)
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)  # its INFO lines and progress bars are not ours to print
    try:  # its rich progress bars go to the console whatever the log level: kept off our output
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return nncf.quantize(model, nncf.Dataset(_batches(calibration)), subset_size=len(calibration),
                                 ignored_scope=ignored)
    finally:
        nncf_logger.setLevel(level)


__all__ = ["CALIBRATION_IMAGES", "INT8_REFUSALS", "PRECISIONS", "calibration_images", "is_layer", "layer_convolutions",
           "onnx_fp16_refusal", "onnx_int8", "openvino_int8", "precision_refusal"]
