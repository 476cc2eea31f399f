"""Run an exported detector (``anomalens export``) with ONNX Runtime or OpenVINO — without torch.

    from anomalens.exported import load_export
    model = load_export("exports/hazelnut")                  # runtime from the format, or runtime="openvino"
    result = model.predict(["a.png", "b.png"])              # DetectionResult: scores, labels, maps, masks

The names of the exported-model loader, kept in one place for the code and the documentation that import them
from here; they live in ``anomalens.inference``:

- ``anomalens.inference.export_predictor``: ``ExportedDetector`` (the ``Predictor`` of an export), ``load_export``;
- ``anomalens.inference.manifest`` / ``model_files``: the export folder's format and its verification as a whole
  (``read_manifest``: every field, file and hash; the manifest copy inside the model file);
- ``anomalens.inference.preprocess``: ``load_input``, ``resize_bilinear_antialiased`` (the numpy twin of the torch
  decode and resize);
- ``anomalens.inference.loading``: ``load_model`` (a run folder or an export folder);
- ``anomalens.inference.parity``: ``compare_outputs``.

Importing this module imports neither torch nor the training code (only numpy, Pillow and, when a model is
opened, its runtime).
"""

from __future__ import annotations

from anomalens.inference.export_predictor import ExportedDetector, load_export
from anomalens.inference.loading import load_model
from anomalens.inference.manifest import (
    EXPORT_FORMAT_VERSION,
    EXTRA,
    FORMAT_FILES,
    INPUT_NAME,
    MANIFEST_FILE,
    RUNTIMES,
    SUMMARY_KEY,
    export_summary,
    is_export,
    is_plain_file_name,
    read_manifest,
)
from anomalens.inference.model_files import onnx_model_facts, openvino_ir_summary
from anomalens.inference.parity import compare_outputs
from anomalens.inference.preprocess import load_input, resize_bilinear_antialiased

__all__ = ["EXPORT_FORMAT_VERSION", "EXTRA", "FORMAT_FILES", "INPUT_NAME", "MANIFEST_FILE", "RUNTIMES", "SUMMARY_KEY",
           "ExportedDetector", "compare_outputs", "export_summary", "is_export", "is_plain_file_name", "load_export",
           "load_input", "load_model", "onnx_model_facts", "openvino_ir_summary", "read_manifest",
           "resize_bilinear_antialiased"]
