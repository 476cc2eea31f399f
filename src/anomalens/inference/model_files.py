"""Readers of the model files inside an export, without a runtime: what ``read_manifest`` checks before a
runtime ever opens them.

``onnx_model_facts`` walks the ONNX protobuf itself (memory-mapped, tensor data skipped) for the model's
``metadata_props`` and every tensor's external-data location; ``openvino_ir_summary`` reads one ``rt_info``
entry of an OpenVINO IR ``model.xml`` with the standard XML parser. A truncated or damaged file is one line
(``ModelFileError``), never a runtime's crash.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from anomalens.errors import ModelFileError

#: The key of the manifest copy inside the model file (ONNX metadata_props, OpenVINO rt_info).
SUMMARY_KEY = "anomalens"


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


__all__ = ["SUMMARY_KEY", "onnx_model_facts", "openvino_ir_summary"]
