"""anomalens: visual anomaly detection — learn normal from normal images, score, threshold, localise.

    import anomalens
    det = anomalens.create_detector("padim")
    data = anomalens.load_dataset("path/to/mvtec/hazelnut")
    det.fit(data.train)
    result = det.predict(data.test)      # scores, labels, maps, masks
    det.save("runs/hazelnut")
    det = anomalens.load_detector("runs/hazelnut")
"""

from anomalens.version import __version__
from anomalens.allocator import keep_freed_memory
from anomalens.decision import DecisionRule, DetectionResult
from anomalens.errors import AnomalensError, ConfigError, DataError, ModelFileError, NotFittedError, NumericalError
from anomalens.registry import register_detector

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
    "fit_run",
    "test_run",
    "predict_images",
    "calibrate_run",
    "evaluate",
    "keep_freed_memory",
]

_LAZY = {
    # The contract imports torch: loaded on first use, so that `import anomalens` and the loader of exported
    # models (anomalens.exported) run without torch.
    "anomalens.detector": ("Detector",),
    # The detector catalog imports every model (timm, ...): loaded on first use so `import anomalens` stays light.
    "anomalens.catalog": ("create_detector", "describe_detector", "detector_class", "list_detectors", "load_detector"),
    "anomalens.data": ("load_dataset", "load_mvtec_category", "load_folder_dataset", "make_synthetic_category",
                       "ImageRecord", "AnomalyDataset"),
    "anomalens.workflow": ("fit_run", "test_run", "predict_images", "calibrate_run"),
    "anomalens.metrics": ("evaluate",),
}


def __getattr__(name: str):
    import importlib

    for module, names in _LAZY.items():
        if name in names:
            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'anomalens' has no attribute {name!r}")
