"""Prediction, one protocol for every runtime: a ``Predictor`` (``protocol.py``) and what is built on it.

    from anomalens.inference import load_predictor, predict
    predictor = load_predictor("runs/hazelnut")             # or an export folder: ONNX Runtime / OpenVINO
    result = predict(predictor, images)                     # decoded (N, C, H, W) → DetectionResult

- ``protocol.py``: the ``Predictor`` protocol (input size, channels, whether it localises, its decision rule,
  ``load`` an image, ``run`` a batch → raw scores and maps);
- ``torch_predictor.py``: the adapter of a fitted ``Detector`` (torch);
- ``export_predictor.py``: the adapter of an export folder, on a runtime of ``runtimes.py`` (ONNX Runtime,
  OpenVINO), fed by ``preprocess.py`` (the numpy twin of the torch decode and resize) — without torch;
- ``manifest.py`` and ``model_files.py``: the export folder's format and its verification as a whole;
- ``rows.py``: ``predict`` — the one check for NaN / inf outputs, the decision, the result rows — written once;
- ``loading.py``: a folder or an object → its ``Predictor``;
- ``parity.py``: how far one runtime's outputs are from another's.

Names are imported on first use: nothing here imports torch but ``TorchPredictor``.
"""

from typing import Any

_WHERE = {
    "Predictor": "anomalens.inference.protocol",
    "TorchPredictor": "anomalens.inference.torch_predictor",
    "ExportedDetector": "anomalens.inference.export_predictor",
    "load_export": "anomalens.inference.export_predictor",
    "as_predictor": "anomalens.inference.loading",
    "load_predictor": "anomalens.inference.loading",
    "predict": "anomalens.inference.rows",
    "predict_inputs": "anomalens.inference.rows",
    "refuse_non_finite": "anomalens.inference.rows",
    "result_rows": "anomalens.inference.rows",
    "RESULT_FIELDS": "anomalens.inference.rows",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'anomalens.inference' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
