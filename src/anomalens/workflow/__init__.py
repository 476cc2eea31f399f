"""The fit → calibrate → test → predict workflow, shared by the CLI and the Python API.

One module per command (``fit``, ``calibration``, ``evaluation`` for ``test``, ``prediction``); every file
they write goes through ``anomalens.outputs`` (the output-folder protocol is documented in
``anomalens.outputs.folders``). Names load on first use, so ``predict`` on an export never imports the
torch side of ``fit`` or ``test``.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "output_kind": "anomalens.outputs", "staged_directory": "anomalens.outputs",
    "MARKER_FILE": "anomalens.outputs.names", "RUN_INFO_FILE": "anomalens.outputs.names",
    "TEST_OUTPUTS": "anomalens.outputs.names",
    "ERROR_FIELDS": "anomalens.outputs.predictions", "HEATMAP_MODES": "anomalens.outputs.predictions",
    "PREDICTION_FIELDS": "anomalens.outputs.predictions",
    "calibrate_run": "anomalens.workflow.calibration",
    "image_key": "anomalens.workflow.common", "peak_rss_mb": "anomalens.workflow.common",
    "read_dataset": "anomalens.workflow.common",
    "ground_truth_masks": "anomalens.workflow.evaluation", "test_run": "anomalens.workflow.evaluation",
    "undefined_metrics": "anomalens.workflow.evaluation",
    "fit_run": "anomalens.workflow.fit",
    "default_writers": "anomalens.workflow.prediction", "predict_images": "anomalens.workflow.prediction",
    "prediction_records": "anomalens.workflow.prediction",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'anomalens.workflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
