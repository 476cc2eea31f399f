"""Run an exported detector (``anomalens export``) with ONNX Runtime or OpenVINO — without torch.

    from anomalens.exported import load_export
    model = load_export("exports/hazelnut")                  # runtime from the format, or runtime="openvino"
    result = model.predict(["a.png", "b.png"])              # DetectionResult: scores, labels, maps, masks

This module imports neither torch nor the training code (only numpy, Pillow and the runtime), so a
service that only predicts pays for neither: importing torch alone is about 0.9 GB of a predict
process's peak memory. It returns the same ``DetectionResult`` as ``Detector.predict``, under the
decision rule saved in the export (thresholds and the minimum-area rule applied by
``DecisionRule.apply``, the same code).

Images are decoded by ``anomalens.data.io.load_image`` (what fit and predict use) and resized to the
graph's input size by ``resize_bilinear_antialiased``, a numpy re-implementation of the resize that
``anomalens.data.TensorImageDataset`` does with torch (``F.interpolate(mode="bilinear", antialias=True)``,
then clamped to [0, 1]); the tests check the two agree to float32 rounding. So an image of any size is
resized exactly as ``predict`` resizes it.

An export is verified as a whole before anything runs (``read_manifest``), and refused with one line
(``ModelFileError``) otherwise; a missing check is a refusal, never a pass:

- ``export.json`` is well formed: known format, detector, parameters, input and outputs of the expected
  types, a valid decision rule;
- ``files`` lists, by plain file name (no folder, no ``..``, not absolute), exactly the model files the format
  needs (``FORMAT_FILES``) — none left out, nothing else — each with its SHA-256, which must match;
- the model file carries the manifest itself (``export_summary``: the manifest less ``files``), in the ONNX
  ``metadata_props`` under ``anomalens`` or the OpenVINO IR's ``rt_info`` under ``anomalens``, and it must be
  the manifest: the decision rule, parameters, input and outputs in ``export.json`` are those hashed inside
  the model file, so editing the JSON alone (a threshold ×100) is refused;
- an ONNX model takes external weights only from files the manifest lists (read from the protobuf itself,
  ``onnx_model_facts``), and a truncated or damaged ONNX / IR file is refused before a runtime sees it.

When the runtime opens the graph, its input must be ``images`` (N, C, H, W) float32 and its outputs
``scores`` (N,) and (localising detectors) ``maps`` (N, H, W) as the manifest says; every batch's outputs
are checked for those shapes; a runtime's own failure to load or run the graph is one line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomalens.data.io import check_decode_mode, describe_source, load_image
from anomalens.decision import DecisionRule, DetectionResult
from anomalens.errors import (
    AnomalensError,
    ConfigError,
    DataError,
    ModelFileError,
    NumericalError,
)
from anomalens.jsonvalues import plain_json
from anomalens.version import __version__

MANIFEST_FILE = "export.json"
EXPORT_FORMAT_VERSION = 1
RUNTIMES = ("onnxruntime", "openvino")
EXTRA = "pip install 'anomalens[export]'"
#: Per format: (the model files it needs, those it may have besides): what ``files`` in the manifest must list.
FORMAT_FILES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "onnx": (frozenset({"model.onnx"}), frozenset({"model.onnx.data"})),  # .data: weights over protobuf's 2 GiB
    "openvino": (frozenset({"model.xml", "model.bin"}), frozenset()),
}
#: The key of the manifest copy inside the model file (ONNX metadata_props, OpenVINO rt_info).
SUMMARY_KEY = "anomalens"
INPUT_NAME = "images"
_SHA256 = re.compile(r"[0-9a-f]{64}")


# ----------------------------------------------------------------------------------- preprocessing
def _antialiased_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights), each (out_size, taps): the bilinear filter of torch's antialiased resize.

    As torch's ``_compute_weights_aa`` (and Pillow's resampling): with scale = in/out, output pixel i is
    centred at scale·(i + 0.5); when shrinking, the triangle filter is widened to ``scale`` input pixels
    on each side; taps outside the image are dropped and the weights renormalised to sum 1. In float32
    like torch's float path.
    """
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    support = scale if scale >= 1.0 else f32(1.0)
    invscale = f32(1.0) / scale if scale >= 1.0 else f32(1.0)
    centers = scale * (np.arange(out_size, dtype=f32) + f32(0.5))
    xmin = np.maximum((centers - support + f32(0.5)).astype(np.int64), 0)
    xmax = np.minimum((centers + support + f32(0.5)).astype(np.int64), in_size)
    taps = int((xmax - xmin).max())
    offsets = np.arange(taps)
    positions = xmin[:, None] + offsets
    x = ((positions - centers[:, None]).astype(f32) + f32(0.5)) * invscale
    weights = np.clip(f32(1.0) - np.abs(x), f32(0.0), None).astype(f32)
    weights[offsets[None, :] >= (xmax - xmin)[:, None]] = 0.0
    total = np.zeros(out_size, f32)
    for j in range(taps):  # summed in tap order, as torch does
        total += weights[:, j]
    weights = np.where(total[:, None] != 0, weights / total[:, None], weights).astype(f32)
    return np.minimum(positions, in_size - 1), weights


def _resample_axis(image: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    index, weights = _antialiased_taps(image.shape[axis], out_size)
    shape = [1] * image.ndim
    shape[axis] = out_size
    out = None
    for j in range(index.shape[1]):  # accumulated tap by tap in float32, as torch's loop
        term = np.take(image, index[:, j], axis=axis) * weights[:, j].reshape(shape)
        out = term if out is None else out + term
    return out


def resize_bilinear_antialiased(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) float32 → (h, w, C): the antialiased bilinear resize of ``anomalens.data``, clamped to [0, 1].

    Width first, then height (torch's order); an axis already at its size is left alone, and an image
    already at ``size`` is returned unchanged (not clamped), as ``TensorImageDataset`` does.
    """
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    out = image.astype(np.float32, copy=False)
    if out.shape[1] != width:
        out = _resample_axis(out, width, axis=1)
    if out.shape[0] != height:
        out = _resample_axis(out, height, axis=0)
    return np.clip(out, 0.0, 1.0)


def load_input(source: Any, input_size: tuple[int, int], channels: int, decode: str = "exact") -> np.ndarray:
    """An image file or array (or an ``ImageRecord``) → (channels, H, W) float32 in [0, 1] at ``input_size``.

    ``decode``: the run's ``decode`` hyper-parameter — "fast" shrinks a large file while decoding, as the
    torch path does (``anomalens.data.io``), so an export scores the pixels its detector was fitted on."""
    source = getattr(source, "source", source)
    fast_for = tuple(input_size) if check_decode_mode(decode) == "fast" else None
    image = resize_bilinear_antialiased(load_image(source, channels, fast_for=fast_for), input_size)
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


# ------------------------------------------------------------------------------------------ manifest
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_plain_file_name(name: Any) -> bool:
    """True for a bare file name: text, not empty, no folder part (``/`` or ``\\``), not ``.`` / ``..``, no NUL.

    What a manifest may list and what a copy of an export (Ray's workers) may write: a name that cannot
    point outside the folder it is joined to."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name and not os.path.isabs(name) and (os.altsep is None or os.altsep not in name))


def _json_value(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def export_summary(manifest: dict[str, Any]) -> str:
    """The text a writer embeds in the model file under ``SUMMARY_KEY``: the manifest less its ``files`` (whose
    hashes depend on the model file), as JSON. ``read_manifest`` requires it to equal ``export.json``."""
    return json.dumps({k: v for k, v in manifest.items() if k != "files"}, default=_json_value)


def _canonical(value: Any) -> str:
    """One text per JSON value, whatever key order or spelling of non-finite numbers (NaN vs null) the
    writer used: what two copies of a manifest are compared by."""
    return json.dumps(plain_json(value), sort_keys=True, separators=(",", ":"))


def _refuse(path: Path, problem: str) -> ModelFileError:
    return ModelFileError(f"{path}: {problem}")


def _check_fields(manifest: dict[str, Any], path: Path) -> None:
    """The manifest's fields have the types and values a loader relies on (ModelFileError naming the first)."""
    fmt = manifest.get("format")
    if fmt not in FORMAT_FILES:
        raise _refuse(path, f"unknown export format {fmt!r:.60} (known: {', '.join(FORMAT_FILES)})")
    if not isinstance(manifest.get("detector"), str) or not manifest["detector"]:
        raise _refuse(path, "'detector' must be the detector's name")
    params = manifest.get("params")
    if not isinstance(params, dict):
        raise _refuse(path, "'params' must be a JSON object")
    batch = params.get("batch_size")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise _refuse(path, f"parameter batch_size must be a positive integer, got {batch!r:.60}")
    try:
        check_decode_mode(params.get("decode", "exact"))
    except (AnomalensError, ValueError, TypeError) as exc:
        raise _refuse(path, f"invalid parameter decode ({exc})") from None
    if not isinstance(manifest.get("localizes"), bool):
        raise _refuse(path, "'localizes' must be true or false")
    spec = manifest.get("input")
    dims = [spec.get(k) for k in ("channels", "height", "width")] if isinstance(spec, dict) else []
    if (len(dims) != 3 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims)
            or dims[0] not in (1, 3) or spec.get("name", INPUT_NAME) != INPUT_NAME):
        raise _refuse(path, "'input' must give the graph input's channels (1 or 3), height and width")
    expected = ["scores", "maps"] if manifest["localizes"] else ["scores"]
    outputs = manifest.get("outputs")
    names = [o.get("name") for o in outputs if isinstance(o, dict)] if isinstance(outputs, list) else None
    if names != expected or len(outputs) != len(expected):
        raise _refuse(path, f"'outputs' must be {' and '.join(expected)} in this order for a detector that "
                            f"{'localises' if manifest['localizes'] else 'does not localise'}, got {names!r:.80}")
    try:
        DecisionRule.from_dict(manifest.get("decision"))
    except (TypeError, ValueError) as exc:
        raise _refuse(path, f"invalid decision rule ({exc})") from None


def _check_file_list(manifest: dict[str, Any], path: Path) -> dict[str, str]:
    """``files``: plain names, exactly the format's model files, a SHA-256 each (module docstring)."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise _refuse(path, "lists no model files")
    for name, digest in files.items():
        if not is_plain_file_name(name):
            raise _refuse(path, f"lists the file {name!r:.80}, which is not a plain file name in the export folder "
                                "(a folder part, '..' or an absolute path); refused")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise _refuse(path, f"the SHA-256 of {name} is missing or malformed ({digest!r:.80})")
    needed, optional = FORMAT_FILES[manifest["format"]]
    missing, unknown = sorted(needed - set(files)), sorted(set(files) - needed - optional)
    if missing:
        raise _refuse(path, f"does not list {', '.join(missing)}, which a {manifest['format']} export needs (so "
                            "it would load unchecked); re-export the run")
    if unknown:
        raise _refuse(path, f"lists {', '.join(unknown)}, which is no file of a {manifest['format']} export")
    return files


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The ``export.json`` of an export folder, verified with the files it lists (module docstring):
    ModelFileError naming the problem otherwise."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ModelFileError(f"{path}: not found; is '{directory}' a folder written by 'anomalens export'?")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not isinstance(manifest, dict) or manifest.get("library") != "anomalens" or manifest.get("kind") != "export":
        raise ModelFileError(f"{path}: not an anomalens export manifest")
    if manifest.get("export_format_version") != EXPORT_FORMAT_VERSION:
        raise ModelFileError(f"{path}: export format version {manifest.get('export_format_version')!r:.40} is not "
                             f"readable by anomalens {__version__} (reads {EXPORT_FORMAT_VERSION}); re-export the run")
    if manifest.get("anomalens_version") != __version__:
        version = manifest.get("anomalens_version")
        raise ModelFileError(f"{path}: exported by anomalens {version!s:.40}, this is anomalens {__version__}; re-export "
                             f"the run with this version (or run it with anomalens=={version!s:.40})")
    _check_fields(manifest, path)
    files = _check_file_list(manifest, path)
    for name, digest in files.items():
        file = directory / name
        if not file.is_file():
            raise ModelFileError(f"{file}: not found (listed in {path})")
        try:
            matches = _sha256(file) == digest
        except OSError as exc:
            raise ModelFileError(f"{file}: cannot be read ({exc.strerror or exc})") from None
        if not matches:
            raise ModelFileError(f"{file}: not the file exported with {path} (SHA-256 differs); re-export the run")
    _check_embedded_summary(directory, manifest, files)
    return manifest


def _check_embedded_summary(directory: Path, manifest: dict[str, Any], files: dict[str, str]) -> None:
    """The manifest copy inside the (hashed) model file must be ``export.json`` less ``files``; an ONNX model
    may take external weights only from listed files."""
    if manifest["format"] == "onnx":
        model = directory / "model.onnx"
        metadata, external = onnx_model_facts(model)
        outside = sorted(name for name in external if name not in files)
        if outside:
            raise _refuse(model, f"takes weights from {', '.join(repr(n)[:80] for n in outside)}, which "
                                 f"{MANIFEST_FILE} does not list (unchecked files); refused")
        summary = metadata.get(SUMMARY_KEY)
        where = f"its metadata_props '{SUMMARY_KEY}'"
    else:
        model = directory / "model.xml"
        summary = openvino_ir_summary(model)
        where = f"its rt_info '{SUMMARY_KEY}'"
    if summary is None:
        raise _refuse(model, f"carries no copy of the manifest ({where}), so {MANIFEST_FILE} cannot be checked "
                             "against it; re-export the run with this version")
    try:
        embedded = json.loads(summary)
    except ValueError as exc:
        raise _refuse(model, f"{where} is not valid JSON ({exc})") from None
    listed = {k: v for k, v in manifest.items() if k != "files"}
    if not isinstance(embedded, dict) or _canonical(embedded) != _canonical(listed):
        keys = sorted(set(listed) | set(embedded)) if isinstance(embedded, dict) else []
        changed = [k for k in keys if _canonical(listed.get(k)) != _canonical(embedded.get(k))] or ["(the whole copy)"]
        raise ModelFileError(f"{directory / MANIFEST_FILE}: differs from the copy inside {model.name} ({where}) in "
                             f"{', '.join(changed)}; the manifest was edited after the export — re-export the run")


# ------------------------------------------------------------------------------- model-file readers
class _Malformed(Exception):
    pass


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Malformed(f"ends inside a field at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Malformed(f"an over-long number at byte {pos}")


def _fields(buf: Any, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """The protobuf fields of the message in ``buf[pos:end]``: (field, wire type, value or start, end)."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value, pos
            continue
        if wire == 2:
            length, pos = _varint(buf, pos, end)
            start, pos = pos, pos + length
        elif wire in (1, 5):
            start, pos = pos, pos + (8 if wire == 1 else 4)
        else:
            raise _Malformed(f"an unknown field encoding ({wire}) at byte {pos}")
        if pos > end:
            raise _Malformed(f"a field runs past the end of its message (byte {end})")
        yield field, wire, start, pos


# ONNX's protobuf schema, only what leads to tensors and to the model's metadata: message → {field: kind}.
_ONNX_SCHEMA: dict[str, dict[int, str]] = {
    "model": {7: "graph", 14: "entry", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "function": {7: "node"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
}


def _entry(buf: Any, start: int, end: int) -> tuple[str, str]:
    key = value = b""
    for field, wire, a, b in _fields(buf, start, end):
        if wire == 2 and field == 1:
            key = bytes(buf[a:b])
        elif wire == 2 and field == 2:
            value = bytes(buf[a:b])
    try:
        return key.decode("utf-8"), value.decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("a metadata entry that is not UTF-8 text") from None


def onnx_model_facts(path: Path) -> tuple[dict[str, str], set[str]]:
    """(metadata_props, the external-data locations of every tensor) of an ONNX file, read from its protobuf
    without loading the weights (memory-mapped; tensor data is skipped). ModelFileError for a file that is
    not a complete ONNX protobuf (truncated, damaged, not ONNX) or holds a metadata key twice."""
    metadata: dict[str, str] = {}
    locations: set[str] = set()

    def walk(buf: Any, kind: str, start: int, end: int, depth: int) -> None:
        if depth > 64:
            raise _Malformed("graphs nested over 64 deep")
        schema = _ONNX_SCHEMA[kind]
        for field, wire, a, b in _fields(buf, start, end):
            sub = schema.get(field)
            if sub is None or wire != 2:
                continue
            if sub != "entry":
                walk(buf, sub, a, b, depth + 1)
            elif kind == "model":
                key, value = _entry(buf, a, b)
                if key in metadata:
                    raise _Malformed(f"the metadata key '{key}' twice")
                metadata[key] = value
            else:  # a tensor's external_data: {location, offset, length, checksum}
                key, value = _entry(buf, a, b)
                if key == "location":
                    locations.add(value)

    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise _Malformed("is empty")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                walk(buf, "model", 0, size, 0)
    except _Malformed as exc:
        raise ModelFileError(f"{path}: not a complete ONNX model ({exc}); the file is truncated or damaged — "
                             "re-export the run") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return metadata, locations


def openvino_ir_summary(path: Path) -> str | None:
    """The ``rt_info`` entry ``SUMMARY_KEY`` of an OpenVINO IR ``model.xml`` (None when absent), read with the
    standard XML parser (no entity expansion beyond expat's limits, nothing fetched). ModelFileError for a
    file that is not IR XML, or holds the entry twice."""
    from xml.etree import ElementTree

    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as exc:
        raise ModelFileError(f"{path}: not a complete OpenVINO IR file (XML: {exc}); the file is truncated or "
                             "damaged — re-export the run") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if root.tag != "net":
        raise ModelFileError(f"{path}: not an OpenVINO IR file (its root element is <{root.tag:.40}>, not <net>)")
    entries = [e for info in root.findall("rt_info") for e in info.findall(SUMMARY_KEY)]
    if len(entries) > 1:
        raise ModelFileError(f"{path}: holds its rt_info '{SUMMARY_KEY}' {len(entries)} times; refused")
    return entries[0].get("value") if entries else None


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """A runtime's (often multi-line) exception as one line: its informative lines, without the C++ source
    locations OpenVINO prefixes, cut at ``limit`` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from src/", "Check '"))] or lines
    text = " ".join(" ".join(useful).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------- runtimes
def _require(package: str, purpose: str) -> Any:
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"{purpose} needs the optional package '{package}', which is not installed: {EXTRA}") from None


def _dims_text(dims: Sequence[Any] | None) -> str:
    if dims is None:
        return "(of any rank)"
    return "(" + ", ".join(str(d) if isinstance(d, int) and d >= 0 else "N" for d in dims) + ")"


def _check_signature(model_path: Path, input_: tuple[str, str, list[Any] | None] | None,
                     outputs: dict[str, tuple[str, list[Any] | None]],
                     expected_input: tuple[int, ...], expected_outputs: dict[str, tuple[int, ...]]) -> None:
    """The graph's input and outputs, as the runtime reads them, against the manifest: name, float32, rank and
    every fixed size (a dimension the graph leaves open, such as the batch, is not compared). ``input_``:
    (name, element type, dims) of its only input (None when it has several); ``outputs``: {name: (type, dims)};
    the expected shapes use -1 for the batch."""
    def differs(dims: list[Any] | None, expected: tuple[int, ...]) -> bool:
        return dims is None or len(dims) != len(expected) or any(isinstance(d, int) and d >= 0 and e >= 0 and d != e
                                                 for d, e in zip(dims, expected))

    if input_ is None or input_[0] != INPUT_NAME or input_[1] != "float32" or differs(input_[2], expected_input):
        found = "several inputs" if input_ is None else f"input '{input_[0]}' {input_[1]} {_dims_text(input_[2])}"
        raise ModelFileError(f"{model_path}: the graph takes {found}, the manifest says '{INPUT_NAME}' float32 "
                             f"{_dims_text(expected_input)}; the model file does not belong to this manifest")
    for name, shape in expected_outputs.items():
        if name not in outputs:
            raise ModelFileError(f"{model_path}: the graph has no output '{name}' (it has {', '.join(sorted(outputs)) or 'none'}); "
                                 "the model file does not belong to this manifest")
        kind, dims = outputs[name]
        if kind != "float32" or differs(dims, shape):
            raise ModelFileError(f"{model_path}: the graph's output '{name}' is {kind} {_dims_text(dims)}, the manifest "
                                 f"says float32 {_dims_text(shape)}; the model file does not belong to this manifest")


class _OnnxRuntime:
    def __init__(self, model_path: Path, output_names: list[str], threads: int | None) -> None:
        ort = _require("onnxruntime", "running an ONNX export")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.model_path = model_path
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 — onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
            raise ModelFileError(f"{model_path}: ONNX Runtime cannot load it ({_one_line(exc)})") from None
        self.output_names = output_names

    def signature(self) -> tuple[tuple[str, str, list[Any]] | None, dict[str, tuple[str, list[Any]]]]:
        def kind(text: str) -> str:
            return "float32" if text == "tensor(float)" else text

        inputs = self.session.get_inputs()
        input_ = (inputs[0].name, kind(inputs[0].type), list(inputs[0].shape)) if len(inputs) == 1 else None
        return input_, {o.name: (kind(o.type), list(o.shape)) for o in self.session.get_outputs()}

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {INPUT_NAME: images})


class _OpenVINO:
    def __init__(self, model_path: Path, output_names: list[str], threads: int | None) -> None:
        ov = _require("openvino", "running an export with OpenVINO")
        core = ov.Core()
        # f32 explicitly: on CPUs with bf16 units OpenVINO would otherwise compute in bf16.
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.model_path = model_path
        try:
            self.model = core.read_model(str(model_path))
            self.compiled = core.compile_model(self.model, "CPU", config)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 — OpenVINO's RuntimeError, its C++ context on several lines
            raise ModelFileError(f"{model_path}: OpenVINO cannot load it ({_one_line(exc)})") from None
        names = {name for port in self.model.outputs for name in port.get_names()}
        # An output the graph lacks is refused by _check_signature before any call.
        self.outputs = [self.compiled.output(name) for name in output_names if name in names]

    def signature(self) -> tuple[tuple[str, str, list[Any] | None] | None, dict[str, tuple[str, list[Any] | None]]]:
        def describe(port: Any) -> tuple[str, list[Any] | None]:
            shape = port.get_partial_shape()
            dims = [d.get_length() if d.is_static else -1 for d in shape] if shape.rank.is_static else None
            kind = port.get_element_type().get_type_name()
            return {"f32": "float32"}.get(kind, kind), dims

        inputs = self.model.inputs
        input_ = None
        if len(inputs) == 1:
            names = inputs[0].get_names()
            input_ = (INPUT_NAME if INPUT_NAME in names else ", ".join(sorted(names)), *describe(inputs[0]))
        outputs = {name: describe(port) for port in self.model.outputs for name in port.get_names()}
        return input_, outputs

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        result = self.compiled(images)
        return [np.asarray(result[port]) for port in self.outputs]


# ----------------------------------------------------------------------------------------- the model
class ExportedDetector:
    """An exported detector: the graph in a runtime, its decision rule and how to feed it.

    Offers what ``anomalens.workflow.predict_images`` uses of a ``Detector``: ``predict``,
    ``predict_in_chunks``, ``decision_``, ``threshold_``, ``pixel_threshold_``, ``localizes``,
    ``input_size``, ``name``. The folder is verified as a whole when opened (module docstring).
    """

    def __init__(self, directory: str | Path, runtime: str | None = None, threads: int | None = None) -> None:
        self.directory = Path(directory)
        self.manifest = manifest = read_manifest(self.directory)  # every field, file and hash checked
        fmt = manifest["format"]
        runtime = runtime or ("onnxruntime" if fmt == "onnx" else "openvino")
        if runtime not in RUNTIMES:
            raise ConfigError(f"unknown runtime '{runtime}'; use one of {', '.join(RUNTIMES)}")
        if fmt == "openvino" and runtime != "openvino":
            raise ConfigError(f"{self.directory}: an OpenVINO export runs with runtime openvino only (export to onnx for onnxruntime)")
        self.model_file = self.directory / ("model.onnx" if fmt == "onnx" else "model.xml")
        self.decision_ = DecisionRule.from_dict(manifest["decision"])  # checked by read_manifest
        self.name: str = manifest["detector"]
        self.params: dict[str, Any] = manifest["params"]
        self.localizes: bool = manifest["localizes"]
        self.image_channels: int = int(manifest["input"]["channels"])
        self.input_size: tuple[int, int] = (int(manifest["input"]["height"]), int(manifest["input"]["width"]))
        self.batch_size: int = int(self.params.get("batch_size") or 16)
        self.runtime = runtime
        output_names = [o["name"] for o in manifest["outputs"]]
        engine = _OnnxRuntime if runtime == "onnxruntime" else _OpenVINO
        self._run = engine(self.model_file, output_names, threads)
        expected = {"scores": (-1,), "maps": (-1, *self.input_size)}
        _check_signature(self.model_file, *self._run.signature(), (-1, self.image_channels, *self.input_size),
                         {name: expected[name] for name in output_names})

    def __repr__(self) -> str:
        return f"ExportedDetector({self.name!r}, {str(self.directory)!r}, runtime={self.runtime!r})"

    @property
    def threshold_(self) -> float:
        return self.decision_.image_threshold

    @property
    def pixel_threshold_(self) -> float | None:
        return self.decision_.pixel_threshold

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The graph on a batch: float32 (N, C, H, W) in [0, 1] at ``input_size`` → (scores (N,), maps or None)."""
        images = np.asarray(images)
        expected = (self.image_channels, *self.input_size)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise DataError(f"{self.name} export: expects images of shape (N, {', '.join(map(str, expected))}), got "
                            f"{images.shape}; use predict() with image files or arrays to have them resized")
        try:
            outputs = self._run(np.ascontiguousarray(images, dtype=np.float32))
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 — the runtime's own failure inside the graph
            raise ModelFileError(f"{self.model_file}: the {self.runtime} graph failed on a batch of {len(images)} "
                                 f"image(s) ({_one_line(exc)})") from None
        n = len(images)
        expected = [(n,), (n, *self.input_size)][: 2 if self.localizes else 1]
        got = [tuple(np.shape(o)) for o in outputs]
        if got != expected:
            raise ModelFileError(f"{self.model_file}: the graph gave outputs of shapes {', '.join(map(str, got))} for {n} "
                                 f"image(s), expected {', '.join(map(str, expected))} (scores{', maps' if self.localizes else ''}); "
                                 "the model file does not belong to this manifest")
        scores = np.asarray(outputs[0]).astype(np.float32, copy=False)
        return scores, (np.asarray(outputs[1]).astype(np.float32, copy=False) if self.localizes else None)

    def score(self, records: Sequence, progress: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw scores (N,) and maps (N, H, W) or None of image files, arrays or ``ImageRecord``s."""
        records = list(records)
        if not records:
            return np.zeros(0, np.float32), None
        scores, maps = [], []
        for start in range(0, len(records), self.batch_size):
            batch = np.stack([load_input(r, self.input_size, self.image_channels, self.params.get("decode", "exact"))
                              for r in records[start : start + self.batch_size]])
            s, m = self.run(batch)
            scores.append(s)
            if m is not None:
                maps.append(m)
        scores_all = np.concatenate(scores)
        maps_all = np.concatenate(maps) if maps else None
        broken = ~np.isfinite(scores_all)
        if maps_all is not None:
            broken |= ~np.isfinite(maps_all.reshape(len(maps_all), -1)).all(axis=1)
        if broken.any():
            first = records[int(np.argmax(broken))]
            raise NumericalError(f"{self.name} export: NaN or infinite scores or maps for {int(broken.sum())} of "
                                 f"{len(records)} images (first: {describe_source(getattr(first, 'source', first))})")
        return scores_all, maps_all

    def predict(self, records: Sequence, progress: bool = False) -> DetectionResult:
        """Scores, labels, maps and masks under the exported decision rule (as ``Detector.predict``)."""
        scores, maps = self.score(records, progress)
        return self.decision_.apply(scores, maps)

    def predict_in_chunks(self, records: Sequence, chunk_size: int = 64, progress: bool = False
                          ) -> Iterator[tuple[int, DetectionResult]]:
        """``predict`` over ``records`` in chunks: yields (offset of the chunk, its DetectionResult)."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        for start in range(0, len(records), chunk_size):
            yield start, self.predict(records[start : start + chunk_size], progress=progress)


def load_export(directory: str | Path, runtime: str | None = None, threads: int | None = None) -> ExportedDetector:
    """Open an export folder for prediction (runtime: onnxruntime or openvino; default from its format)."""
    if not Path(directory).is_dir():
        raise ModelFileError(f"{directory}: not found or not a folder; expected a folder written by 'anomalens export'")
    return ExportedDetector(directory, runtime, threads)


def load_model(path: str | Path, runtime: str | None = None, device: str | None = None) -> Any:
    """A run folder (torch) or an export folder (onnxruntime / openvino), for ``predict`` and ``serve``.

    ``runtime``: None picks by the folder (a run: torch; an export: its format's runtime). A run with an
    export runtime, or an export with torch, is refused with one line saying what to do. torch is imported
    only for a run folder.
    """
    path = Path(path)
    if is_export(path):
        if runtime == "torch":
            raise ConfigError(f"{path}: is an export; run it with --runtime onnxruntime or openvino "
                              "(or use the run folder it came from with torch)")
        return load_export(path, runtime=runtime)
    if runtime not in (None, "torch"):
        raise ConfigError(f"{path}: is not an export folder; --runtime {runtime} needs one "
                          f"('anomalens export {path} -o EXPORT' first), or use the run with torch")
    from anomalens.catalog import load_detector

    return load_detector(path, device=device)


def is_export(path: str | Path) -> bool:
    """True for a folder holding an export manifest (as opposed to a run folder)."""
    return (Path(path) / MANIFEST_FILE).is_file()


def compare_outputs(ref_scores: np.ndarray, scores: np.ndarray, ref_maps: np.ndarray | None,
                    maps: np.ndarray | None) -> dict[str, float]:
    """Largest absolute and relative differences of scores and maps (runtime vs torch).

    Relative differences are taken against the scale of the reference — the largest |score| of the
    images, the largest |map value| of each image — so that values near zero (most of a map, a score
    near 0) do not inflate them.
    """
    ref_scores, scores = np.asarray(ref_scores, np.float64), np.asarray(scores, np.float64)
    score_diff = np.abs(scores - ref_scores)
    score_scale = max(float(np.abs(ref_scores).max(initial=0.0)), 1e-12)
    out = {"scores_abs": float(score_diff.max(initial=0.0)), "scores_rel": float(score_diff.max(initial=0.0)) / score_scale,
           "maps_abs": 0.0, "maps_rel": 0.0}
    if ref_maps is not None and maps is not None:
        ref, got = np.asarray(ref_maps, np.float64), np.asarray(maps, np.float64)
        diff = np.abs(got - ref).reshape(len(ref), -1)
        scale = np.maximum(np.abs(ref).reshape(len(ref), -1).max(axis=1), 1e-12)
        out["maps_abs"] = float(diff.max(initial=0.0))
        out["maps_rel"] = float((diff.max(axis=1, initial=0.0) / scale).max(initial=0.0))
    return out


__all__ = ["FORMAT_FILES", "ExportedDetector", "compare_outputs", "export_summary", "is_export", "is_plain_file_name",
           "load_export", "load_input", "onnx_model_facts", "openvino_ir_summary", "read_manifest",
           "resize_bilinear_antialiased"]
