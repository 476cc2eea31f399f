"""anomalens: visual anomaly detection — learn normal from normal images, score, threshold, localise.

    import anomalens
    det = anomalens.create_detector("padim")
    data = anomalens.load_dataset("path/to/mvtec/hazelnut")
    det.fit(data.train)
    result = det.predict(data.test)      # scores, labels, maps, masks
    det.save("runs/hazelnut")
    det = anomalens.load_detector("runs/hazelnut")

The names below are the whole top-level API (``dir(anomalens)`` lists them). Importing the package
imports neither torch nor numpy: each name is loaded from its module on first use, so that the command
line and the loader of exported models (``anomalens.exported``) start fast and run without torch.
"""

from anomalens.errors import AnomalensError, ConfigError, DataError, ModelFileError, NotFittedError, NumericalError
from anomalens.version import __version__

__all__ = [
    "__version__",
    "AnomalensError",
    "ConfigError",
    "DataError",
    "DecisionRule",
    "DetectionResult",
    "Detector",
    "ModelFileError",
    "NotFittedError",
    "NumericalError",
    "create_detector",
    "describe_detector",
    "list_detectors",
    "load_detector",
    "register_detector",
    "load_dataset",
    "load_unified",
    "fit_run",
    "test_run",
    "predict_images",
    "calibrate_run",
    "evaluate",
]

# name → the module that defines it, imported on first use (PEP 562).
_LAZY = {
    "DecisionRule": "anomalens.decision",
    "DetectionResult": "anomalens.decision",
    "Detector": "anomalens.detector",  # the contract imports torch
    "create_detector": "anomalens.catalog",
    "describe_detector": "anomalens.catalog",
    "list_detectors": "anomalens.catalog",
    "load_detector": "anomalens.catalog",
    "register_detector": "anomalens.registry",
    "load_dataset": "anomalens.data",
    "load_unified": "anomalens.data",
    "fit_run": "anomalens.workflow",
    "test_run": "anomalens.workflow",
    "predict_images": "anomalens.workflow",
    "calibrate_run": "anomalens.workflow",
    "evaluate": "anomalens.metrics",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'anomalens' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)  # test_run carries __test__ = False (workflow)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(__all__) | {name for name in globals() if not name.startswith("_")} | {"__version__"})
