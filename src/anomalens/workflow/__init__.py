"""The fit → calibrate → test → predict workflow, shared by the CLI and the Python API.

One module per command (``fit``, ``calibration``, ``evaluation`` for ``test``, ``prediction``); every file
they write goes through ``anomalens.outputs`` (the output-folder protocol is documented in
``anomalens.outputs.folders``).
"""

from anomalens.outputs import output_kind, staged_directory
from anomalens.outputs.names import MARKER_FILE, RUN_INFO_FILE, TEST_OUTPUTS
from anomalens.outputs.predictions import ERROR_FIELDS, HEATMAP_MODES, PREDICTION_FIELDS
from anomalens.workflow.calibration import calibrate_run
from anomalens.workflow.common import image_key, peak_rss_mb, read_dataset
from anomalens.workflow.evaluation import ground_truth_masks, test_run, undefined_metrics
from anomalens.workflow.fit import fit_run
from anomalens.workflow.prediction import default_writers, predict_images, prediction_records

test_run.__test__ = False  # a user's `from anomalens.workflow import test_run` is not a pytest test

__all__ = ["ERROR_FIELDS", "HEATMAP_MODES", "MARKER_FILE", "PREDICTION_FIELDS", "RUN_INFO_FILE", "TEST_OUTPUTS",
           "calibrate_run", "default_writers", "fit_run", "ground_truth_masks", "image_key", "output_kind",
           "peak_rss_mb", "predict_images", "prediction_records", "read_dataset", "staged_directory", "test_run",
           "undefined_metrics"]
