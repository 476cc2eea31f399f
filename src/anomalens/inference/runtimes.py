"""The runtimes an export runs in: one session class per runtime (ONNX Runtime, OpenVINO), each loading the
graph, reporting its signature (input and outputs as the runtime reads them) and running a batch.

A runtime's own failure to load a graph is one line naming the file (``ModelFileError``); a missing runtime
package is one line saying what to install (``ConfigError``). ``check_signature`` holds the graph to the
manifest before any call. A new runtime is one more session class here and its name in ``SESSIONS``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomalens.errors import ConfigError, ModelFileError
from anomalens.inference.manifest import EXTRA, INPUT_NAME

#: (name, element type, dims) of a graph's only input (None when it has several); {name: (type, dims)} of its outputs.
Signature = tuple[tuple[str, str, list[Any] | None] | None, dict[str, tuple[str, list[Any] | None]]]


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A runtime's (often multi-line) exception as one line: its informative lines, without the C++ source
    locations OpenVINO prefixes, cut at ``limit`` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from src/", "Check '"))] or lines
    text = " ".join(" ".join(useful).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def require_package(package: str, purpose: str) -> Any:
    """The optional ``package``, imported; ConfigError saying what to install when it is missing."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"{purpose} needs the optional package '{package}', which is not installed: {EXTRA}") from None


def dims_text(dims: Sequence[Any] | None) -> str:
    """Dimensions as the messages print them: "(N, 3, 64, 64)", an open dimension as N."""
    if dims is None:
        return "(of any rank)"
    return "(" + ", ".join(str(d) if isinstance(d, int) and d >= 0 else "N" for d in dims) + ")"


def check_signature(model_path: Path, input_: tuple[str, str, list[Any] | None] | None,
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
        found = "several inputs" if input_ is None else f"input '{input_[0]}' {input_[1]} {dims_text(input_[2])}"
        raise ModelFileError(f"{model_path}: the graph takes {found}, the manifest says '{INPUT_NAME}' float32 "
                             f"{dims_text(expected_input)}; the model file does not belong to this manifest")
    for name, shape in expected_outputs.items():
        if name not in outputs:
            raise ModelFileError(f"{model_path}: the graph has no output '{name}' (it has {', '.join(sorted(outputs)) or 'none'}); "
                                 "the model file does not belong to this manifest")
        kind, dims = outputs[name]
        if kind != "float32" or differs(dims, shape):
            raise ModelFileError(f"{model_path}: the graph's output '{name}' is {kind} {dims_text(dims)}, the manifest "
                                 f"says float32 {dims_text(shape)}; the model file does not belong to this manifest")


class OnnxRuntimeSession:
    """A graph in ONNX Runtime (CUDA when it offers it, else the CPU)."""

    def __init__(self, model_path: Path, output_names: list[str], threads: int | None) -> None:
        ort = require_package("onnxruntime", "running an ONNX export")
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
            raise ModelFileError(f"{model_path}: ONNX Runtime cannot load it ({one_line(exc)})") from None
        self.output_names = output_names

    def signature(self) -> Signature:
        def kind(text: str) -> str:
            return "float32" if text == "tensor(float)" else text

        inputs = self.session.get_inputs()
        input_ = (inputs[0].name, kind(inputs[0].type), list(inputs[0].shape)) if len(inputs) == 1 else None
        return input_, {o.name: (kind(o.type), list(o.shape)) for o in self.session.get_outputs()}

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {INPUT_NAME: images})


_OPENVINO_CORE: list[Any] = []
_OPENVINO_CORE_LOCK = threading.Lock()


def openvino_core(ov: Any) -> Any:
    """The process's one OpenVINO ``Core``, created on first use and never destroyed.

    Each ``Core`` loads its own CPU plugin, which installs an alternate signal stack on the thread that creates
    it and puts the previous one back when it is destroyed; two Cores destroyed in the order they were created
    leave a freed stack installed, and the next signal handled in Python (a subprocess's or a decoding worker's
    SIGCHLD, SIGTERM) then kills the process with SIGSEGV. One Core for every export avoids it; what a model
    computes is set when it is compiled, not by the Core."""
    with _OPENVINO_CORE_LOCK:
        if not _OPENVINO_CORE:
            _OPENVINO_CORE.append(ov.Core())
        return _OPENVINO_CORE[0]


class OpenVINOSession:
    """A graph in OpenVINO on the CPU, computing in float32."""

    def __init__(self, model_path: Path, output_names: list[str], threads: int | None) -> None:
        ov = require_package("openvino", "running an export with OpenVINO")
        core = openvino_core(ov)
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
            raise ModelFileError(f"{model_path}: OpenVINO cannot load it ({one_line(exc)})") from None
        names = {name for port in self.model.outputs for name in port.get_names()}
        # An output the graph lacks is refused by check_signature before any call.
        self.outputs = [self.compiled.output(name) for name in output_names if name in names]

    def signature(self) -> Signature:
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


#: The session class of each runtime.
SESSIONS: dict[str, type] = {"onnxruntime": OnnxRuntimeSession, "openvino": OpenVINOSession}


def open_session(runtime: str, model_path: Path, output_names: list[str], threads: int | None) -> Any:
    """The graph ``model_path`` loaded in ``runtime`` ("onnxruntime" or "openvino"), to give ``output_names``."""
    return SESSIONS[runtime](model_path, output_names, threads)


__all__ = ["SESSIONS", "OnnxRuntimeSession", "OpenVINOSession", "check_signature", "dims_text", "one_line",
           "open_session", "openvino_core", "require_package"]
