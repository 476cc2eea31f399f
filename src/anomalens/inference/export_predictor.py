"""The ``Predictor`` of an export folder (``anomalens export``), run by ONNX Runtime or OpenVINO — without torch.

    from anomalens.exported import load_export
    model = load_export("exports/hazelnut")                  # runtime from the format, or runtime="openvino"
    result = model.predict(["a.png", "b.png"])              # DetectionResult: scores, labels, maps, masks

The folder is verified as a whole when opened (``anomalens.inference.manifest.read_manifest``); then the graph
is loaded in its runtime (``anomalens.inference.runtimes``) and its input must be ``images`` (N, C, H, W)
float32 and its outputs ``scores`` (N,) and (localising detectors) ``maps`` (N, H, W) as the manifest says.
Every call's outputs are checked for those shapes; a runtime's own failure to run the graph is one line naming
the file. Results are those of ``Detector.predict``: the same ``DetectionResult``, under the decision rule
saved in the export (``anomalens.inference.rows.predict``, the code every runtime shares).

Imports neither torch nor the training code (only numpy, Pillow and the runtime), so a service that only
predicts pays for neither.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomalens.decision import DecisionRule, DetectionResult
from anomalens.errors import ConfigError, DataError, ModelFileError
from anomalens.inference.manifest import RUNTIMES, read_manifest
from anomalens.inference.preprocess import load_input
from anomalens.inference.protocol import batch_size_of
from anomalens.inference.rows import predict_inputs, predict_inputs_in_chunks, score_inputs
from anomalens.inference.runtimes import check_signature, one_line, open_session


class ExportedDetector:
    """An exported detector: the graph in a runtime, its decision rule and how to feed it (a ``Predictor``).

    Besides the protocol (``run``, ``load``, ``decision_``, ``input_size``, ...) it offers what a ``Detector``
    offers for prediction: ``predict``, ``predict_in_chunks``, ``score``, ``threshold_``, ``pixel_threshold_``.
    """

    device = "cpu"

    def __init__(self, directory: str | Path, runtime: str | None = None, threads: int | None = None) -> None:
        self.directory = Path(directory)
        self.manifest = manifest = read_manifest(self.directory)  # every field, file and hash checked
        fmt = manifest["format"]
        runtime = runtime or ("onnxruntime" if fmt == "onnx" else "openvino")
        if runtime not in RUNTIMES:
            raise ConfigError(f"unknown runtime '{runtime}'; use one of {', '.join(RUNTIMES)}")
        if fmt == "openvino" and runtime != "openvino":
            raise ConfigError(f"{self.directory}: an OpenVINO export runs with runtime openvino only (export to onnx for onnxruntime)")
        self.model_file = self.directory / ("model.onnx" if fmt == "onnx" else "model.xml")
        self.decision_ = DecisionRule.from_dict(manifest["decision"])  # checked by read_manifest
        self.name: str = manifest["detector"]
        self.params: dict[str, Any] = manifest["params"]
        self.localizes: bool = manifest["localizes"]
        self.image_channels: int = int(manifest["input"]["channels"])
        self.input_size: tuple[int, int] = (int(manifest["input"]["height"]), int(manifest["input"]["width"]))
        self.batch_size: int = batch_size_of(self.params)
        self.runtime = runtime
        self.packages: tuple[str, ...] = (runtime,)
        self.precision: str = manifest["precision"]  # checked by read_manifest
        self.details: dict[str, Any] = {"export": {"format": fmt, "precision": self.precision}}
        output_names = [o["name"] for o in manifest["outputs"]]
        self.session = open_session(runtime, self.model_file, output_names, threads)
        expected = {"scores": (-1,), "maps": (-1, *self.input_size)}
        check_signature(self.model_file, *self.session.signature(), (-1, self.image_channels, *self.input_size),
                        {name: expected[name] for name in output_names})

    def __repr__(self) -> str:
        return f"ExportedDetector({self.name!r}, {str(self.directory)!r}, runtime={self.runtime!r})"

    @property
    def threshold_(self) -> float:
        return self.decision_.image_threshold

    @property
    def pixel_threshold_(self) -> float | None:
        return self.decision_.pixel_threshold

    # -- the Predictor protocol ------------------------------------------------------------------------
    def load(self, source: Any) -> np.ndarray:
        """An image file or array (or an ``ImageRecord``) → (C, H, W) float32 at ``input_size``: the numpy twin
        of the torch decode (``anomalens.inference.preprocess.load_input``), with the run's ``decode``."""
        return load_input(source, self.input_size, self.image_channels, self.params.get("decode", "exact"))

    def run(self, images: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """A batch of any length, float32 (N, C, H, W) at ``input_size`` → (scores (N,), maps or None), in graph
        calls of at most ``batch_size`` images (``run_graph``)."""
        images = self._checked_batch(images)
        if len(images) <= self.batch_size:
            return self.run_graph(images)
        parts = [self.run_graph(images[start : start + self.batch_size])
                 for start in range(0, len(images), self.batch_size)]
        scores = np.concatenate([s for s, _ in parts])
        return scores, (np.concatenate([m for _, m in parts]) if self.localizes else None)

    def run_graph(self, images: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """One call of the graph on the whole batch, whatever its length: (scores (N,), maps or None)."""
        images = self._checked_batch(images)
        try:
            outputs = self.session(images)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 — the runtime's own failure inside the graph
            raise ModelFileError(f"{self.model_file}: the {self.runtime} graph failed on a batch of {len(images)} "
                                 f"image(s) ({one_line(exc)})") from None
        n = len(images)
        expected = [(n,), (n, *self.input_size)][: 2 if self.localizes else 1]
        got = [tuple(np.shape(o)) for o in outputs]
        if got != expected:
            raise ModelFileError(f"{self.model_file}: the graph gave outputs of shapes {', '.join(map(str, got))} for {n} "
                                 f"image(s), expected {', '.join(map(str, expected))} (scores{', maps' if self.localizes else ''}); "
                                 "the model file does not belong to this manifest")
        scores = np.asarray(outputs[0]).astype(np.float32, copy=False)
        return scores, (np.asarray(outputs[1]).astype(np.float32, copy=False) if self.localizes else None)

    def _checked_batch(self, images: Any) -> np.ndarray:
        images = np.asarray(images)
        expected = (self.image_channels, *self.input_size)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise DataError(f"{self.name} export: expects images of shape (N, {', '.join(map(str, expected))}), got "
                            f"{images.shape}; use predict() with image files or arrays to have them resized")
        return np.ascontiguousarray(images, dtype=np.float32)

    # -- what a Detector offers for prediction ----------------------------------------------------------
    def score(self, records: Sequence, progress: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw scores (N,) and maps (N, H, W) or None of image files, arrays or ``ImageRecord`` s."""
        return score_inputs(self, records)

    def predict(self, records: Sequence, progress: bool = False) -> DetectionResult:
        """Scores, labels, maps and masks under the exported decision rule (as ``Detector.predict``)."""
        return predict_inputs(self, records)

    def predict_in_chunks(self, records: Sequence, chunk_size: int = 64, progress: bool = False
                          ) -> Iterator[tuple[int, DetectionResult]]:
        """``predict`` over ``records`` in chunks: yields (offset of the chunk, its DetectionResult)."""
        return predict_inputs_in_chunks(self, records, chunk_size)


def load_export(directory: str | Path, runtime: str | None = None, threads: int | None = None) -> ExportedDetector:
    """Open an export folder for prediction (runtime: onnxruntime or openvino; default from its format)."""
    if not Path(directory).is_dir():
        raise ModelFileError(f"{directory}: not found or not a folder; expected a folder written by 'anomalens export'")
    return ExportedDetector(directory, runtime, threads)


__all__ = ["ExportedDetector", "load_export"]
