"""The export folder's format and its verification: an export is checked as a whole before anything runs.

``read_manifest`` refuses an export with one line (``ModelFileError``) unless — a missing check is a refusal,
never a pass:

- ``export.json`` is well formed: known format, detector, parameters, input and outputs of the expected
  types, a valid decision rule, a ``precision`` the format offers (``FORMAT_PRECISIONS``) and, for int8, the
  ``calibration`` it was quantised with;
- ``files`` lists, by plain file name (no folder, no ``..``, not absolute), exactly the model files the format
  needs (``FORMAT_FILES``) — none left out, nothing else — each with its SHA-256, which must match;
- the model file carries the manifest itself (``export_summary``: the manifest less ``files``), in the ONNX
  ``metadata_props`` under ``anomalens`` or the OpenVINO IR's ``rt_info`` under ``anomalens``, and it must be
  the manifest: the decision rule, parameters, input and outputs in ``export.json`` are those hashed inside
  the model file, so editing the JSON alone (a threshold ×100) is refused;
- an ONNX model takes external weights only from files the manifest lists (read from the protobuf itself,
  ``anomalens.inference.model_files.onnx_model_facts``), and a truncated or damaged ONNX / IR file is refused
  before a runtime sees it.

The writer (``anomalens.export``) takes the format's names from here (``MANIFEST_FILE``, ``FORMAT_FILES``,
``SUMMARY_KEY``, ``export_summary``), so what is written and what is read are defined once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from anomalens.data.io import check_decode_mode
from anomalens.decision import DecisionRule
from anomalens.errors import AnomalensError, ModelFileError
from anomalens.inference.model_files import (
    SUMMARY_KEY,
    onnx_model_facts,
    openvino_ir_summary,
)
from anomalens.jsonvalues import plain_json, read_folder_record
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
PRECISIONS = ("fp32", "fp16", "int8")
#: Per format: the precisions an export may be in (``anomalens.quantization``).
FORMAT_PRECISIONS: dict[str, tuple[str, ...]] = {"onnx": ("fp32", "int8"), "openvino": ("fp32", "fp16", "int8")}
INPUT_NAME = "images"
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    _check_precision(manifest, path)


def _check_precision(manifest: dict[str, Any], path: Path) -> None:
    """``precision``: one the format offers; int8 names how many images calibrated it, other precisions none."""
    precision, offered = manifest.get("precision"), FORMAT_PRECISIONS[manifest["format"]]
    if precision not in offered:
        raise _refuse(path, f"'precision' must be one of {', '.join(offered)} for a {manifest['format']} export, got "
                            f"{precision!r:.40}; re-export the run")
    calibration = manifest.get("calibration")
    if precision == "int8":
        images = calibration.get("images") if isinstance(calibration, dict) else None
        if isinstance(images, bool) or not isinstance(images, int) or images < 1:
            raise _refuse(path, "an int8 export must say what it was calibrated on ('calibration' with its number of "
                                "images); re-export the run")
    elif calibration is not None:
        raise _refuse(path, f"a {precision} export has no calibration, but 'calibration' is set; re-export the run")


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
    manifest = read_folder_record(directory, MANIFEST_FILE, "anomalens export")
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


def is_export(path: str | Path) -> bool:
    """True for a folder holding an export manifest (as opposed to a run folder)."""
    return (Path(path) / MANIFEST_FILE).is_file()


__all__ = [
    "EXPORT_FORMAT_VERSION",
    "EXTRA",
    "FORMAT_FILES",
    "FORMAT_PRECISIONS",
    "INPUT_NAME",
    "MANIFEST_FILE",
    "PRECISIONS",
    "RUNTIMES",
    "SUMMARY_KEY",
    "export_summary",
    "is_export",
    "is_plain_file_name",
    "read_manifest",
]
