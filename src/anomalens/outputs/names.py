"""The names of the files anomalens writes, in one place: a run folder, a test report, predictions, an
export, and the marker every output folder carries. Torch-free and import-free."""

from __future__ import annotations

MARKER_FILE = ".anomalens-output.json"

# A run folder (``fit``; ``calibrate`` and ``test`` add to it)
CONFIG_FILE = "detector.json"
WEIGHTS_FILE = "weights.safetensors"
RUN_INFO_FILE = "run.json"
CALIBRATION_FILE = "calibration.json"
RUN_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, RUN_INFO_FILE, CALIBRATION_FILE})

# A test report (``test``: into the run, or ``-o``); metrics.json is written last
METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.csv"
REPORT_FILE = "report.html"
TEST_OUTPUTS = frozenset({METRICS_FILE, SCORES_FILE, REPORT_FILE, "roc.png", "score_histogram.png", "loss_curves.png",
                          "cases", "precision_recall.png", "pixel_roc.png", "pro_curve.png"})

# Predictions (``predict``)
PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSONL = "predictions.jsonl"
ERRORS_CSV = "errors.csv"
HEATMAPS_DIR = "heatmaps"
MASKS_DIR = "masks"
PREDICTION_OUTPUTS = frozenset({PREDICTIONS_CSV, PREDICTIONS_JSONL, ERRORS_CSV, HEATMAPS_DIR, MASKS_DIR})

# An export (``export``)
MANIFEST_FILE = "export.json"
EXPORT_MODEL_FILES = frozenset({"model.onnx", "model.onnx.data", "model.xml", "model.bin"})
EXPORT_OUTPUTS = EXPORT_MODEL_FILES | {MANIFEST_FILE}

# A synthetic dataset category (``anomalens.data.make_synthetic_category``)
DATASET_OUTPUTS = frozenset({"train", "test", "ground_truth", "synthetic.json"})

# The demo (``demo``)
DEMO_OUTPUTS = frozenset({"data", "runs", "index.html"})
