"""anomalens: visual anomaly detection — learn normal from normal images, score, threshold, localise.

    import anomalens
    det = anomalens.create_detector("padim")
    data = anomalens.load_dataset("path/to/mvtec/hazelnut")
    det.fit(data.train)
    result = det.predict(data.test)      # scores, labels, maps, masks
    det.save("runs/hazelnut")
    det = anomalens.load_detector("runs/hazelnut")
"""

__version__ = "0.1.0"

from anomalens.detector import (  # noqa: E402
    DetectionResult,
    Detector,
    create_detector,
    list_detectors,
    load_detector,
    register_detector,
)
from anomalens.allocator import keep_freed_memory  # noqa: E402
from anomalens.errors import AnomalensError, ConfigError, DataError, ModelFileError  # noqa: E402

__all__ = [
    "AnomalensError",
    "ConfigError",
    "DataError",
    "DetectionResult",
    "Detector",
    "ModelFileError",
    "create_detector",
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


def __getattr__(name: str):
    # Data, workflow and metrics are imported on first use so `import anomalens` stays light.
    if name in ("load_dataset", "load_mvtec_category", "load_folder_dataset", "make_synthetic_category", "ImageRecord", "AnomalyDataset"):
        import anomalens.data as data

        return getattr(data, name)
    if name in ("fit_run", "test_run", "predict_images", "calibrate_run"):
        import anomalens.workflow as workflow

        return getattr(workflow, name)
    if name == "evaluate":
        from anomalens.metrics import evaluate

        return evaluate
    raise AttributeError(f"module 'anomalens' has no attribute {name!r}")
