"""From a folder (or an object) to a ``Predictor``: a run folder is run by torch, an export folder by its
runtime; the one place the command line, the service and Ray open the model they predict with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anomalens.errors import ConfigError
from anomalens.inference.export_predictor import load_export
from anomalens.inference.manifest import is_export
from anomalens.inference.protocol import Predictor


def load_model(path: str | Path, runtime: str | None = None, device: str | None = None) -> Any:
    """A run folder as its fitted ``Detector`` (torch), or an export folder as its ``ExportedDetector``
    (onnxruntime / openvino).

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


def as_predictor(model: Any) -> Predictor:
    """``model`` as a ``Predictor``: a predictor (an export) as it is, a fitted ``Detector`` wrapped in a
    ``TorchPredictor``; TypeError for anything else."""
    if isinstance(model, Predictor):
        return model
    if callable(getattr(model, "inference_module", None)):  # a Detector, told apart without importing torch
        from anomalens.inference.torch_predictor import TorchPredictor

        return TorchPredictor(model)
    raise TypeError(f"cannot predict with a {type(model).__name__}: give a fitted Detector, an export "
                    "(anomalens.exported.load_export) or a Predictor")


def load_predictor(path: str | Path, runtime: str | None = None, device: str | None = None) -> Predictor:
    """The ``Predictor`` of a run folder (torch) or an export folder (onnxruntime / openvino); ``runtime``
    and refusals as for ``load_model``."""
    return as_predictor(load_model(path, runtime=runtime, device=device))


__all__ = ["as_predictor", "load_model", "load_predictor"]
