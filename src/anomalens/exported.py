"""Run an exported detector (``anomalens export``) with ONNX Runtime or OpenVINO — without torch.

    from anomalens.exported import load_export
    model = load_export("exports/hazelnut")                  # runtime from the format, or runtime="openvino"
    result = model.predict(["a.png", "b.png"])              # DetectionResult: scores, labels, maps, masks

This module imports neither torch nor the training code (only numpy, Pillow and the runtime), so a
service that only predicts pays for neither: importing torch alone is about 0.9 GB of a predict
process's peak memory. It returns the same ``DetectionResult`` as ``Detector.predict``, under the
decision rule saved in the export (thresholds and the minimum-area rule applied by
``DecisionRule.apply``, the same code).

Images are decoded by ``anomalens.data.io.load_image`` (what fit and predict use) and resized to the
graph's input size by ``resize_bilinear_antialiased``, a numpy re-implementation of the resize that
``anomalens.data.TensorImageDataset`` does with torch (``F.interpolate(mode="bilinear", antialias=True)``,
then clamped to [0, 1]); the tests check the two agree to float32 rounding. So an image of any size is
resized exactly as ``predict`` resizes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from anomalens.data.io import check_decode_mode, describe_source, load_image
from anomalens.decision import DecisionRule, DetectionResult
from anomalens.errors import ConfigError, DataError, ModelFileError, NumericalError
from anomalens.version import __version__

MANIFEST_FILE = "export.json"
EXPORT_FORMAT_VERSION = 1
RUNTIMES = ("onnxruntime", "openvino")
EXTRA = "pip install 'anomalens[export]'"


# ----------------------------------------------------------------------------------- preprocessing
def _antialiased_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights), each (out_size, taps): the bilinear filter of torch's antialiased resize.

    As torch's ``_compute_weights_aa`` (and Pillow's resampling): with scale = in/out, output pixel i is
    centred at scale·(i + 0.5); when shrinking, the triangle filter is widened to ``scale`` input pixels
    on each side; taps outside the image are dropped and the weights renormalised to sum 1. In float32
    like torch's float path.
    """
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    support = scale if scale >= 1.0 else f32(1.0)
    invscale = f32(1.0) / scale if scale >= 1.0 else f32(1.0)
    centers = scale * (np.arange(out_size, dtype=f32) + f32(0.5))
    xmin = np.maximum((centers - support + f32(0.5)).astype(np.int64), 0)
    xmax = np.minimum((centers + support + f32(0.5)).astype(np.int64), in_size)
    taps = int((xmax - xmin).max())
    offsets = np.arange(taps)
    positions = xmin[:, None] + offsets
    x = ((positions - centers[:, None]).astype(f32) + f32(0.5)) * invscale
    weights = np.clip(f32(1.0) - np.abs(x), f32(0.0), None).astype(f32)
    weights[offsets[None, :] >= (xmax - xmin)[:, None]] = 0.0
    total = np.zeros(out_size, f32)
    for j in range(taps):  # summed in tap order, as torch does
        total += weights[:, j]
    weights = np.where(total[:, None] != 0, weights / total[:, None], weights).astype(f32)
    return np.minimum(positions, in_size - 1), weights


def _resample_axis(image: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    index, weights = _antialiased_taps(image.shape[axis], out_size)
    shape = [1] * image.ndim
    shape[axis] = out_size
    out = None
    for j in range(index.shape[1]):  # accumulated tap by tap in float32, as torch's loop
        term = np.take(image, index[:, j], axis=axis) * weights[:, j].reshape(shape)
        out = term if out is None else out + term
    return out


def resize_bilinear_antialiased(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) float32 → (h, w, C): the antialiased bilinear resize of ``anomalens.data``, clamped to [0, 1].

    Width first, then height (torch's order); an axis already at its size is left alone, and an image
    already at ``size`` is returned unchanged (not clamped), as ``TensorImageDataset`` does.
    """
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    out = image.astype(np.float32, copy=False)
    if out.shape[1] != width:
        out = _resample_axis(out, width, axis=1)
    if out.shape[0] != height:
        out = _resample_axis(out, height, axis=0)
    return np.clip(out, 0.0, 1.0)


def load_input(source: Any, input_size: tuple[int, int], channels: int, decode: str = "exact") -> np.ndarray:
    """An image file or array (or an ``ImageRecord``) → (channels, H, W) float32 in [0, 1] at ``input_size``.

    ``decode``: the run's ``decode`` hyper-parameter — "fast" shrinks a large file while decoding, as the
    torch path does (``anomalens.data.io``), so an export scores the pixels its detector was fitted on."""
    source = getattr(source, "source", source)
    fast_for = tuple(input_size) if check_decode_mode(decode) == "fast" else None
    image = resize_bilinear_antialiased(load_image(source, channels, fast_for=fast_for), input_size)
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


# ------------------------------------------------------------------------------------------ manifest
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The ``export.json`` of an export folder, checked (ModelFileError naming the problem)."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ModelFileError(f"{path}: not found; is '{directory}' a folder written by 'anomalens export'?")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("library") != "anomalens" or manifest.get("kind") != "export":
        raise ModelFileError(f"{path}: not an anomalens export manifest")
    if manifest.get("export_format_version") != EXPORT_FORMAT_VERSION:
        raise ModelFileError(f"{path}: export format version {manifest.get('export_format_version')} is not "
                             f"readable by anomalens {__version__} (reads {EXPORT_FORMAT_VERSION}); re-export the run")
    if manifest.get("anomalens_version") != __version__:
        version = manifest.get("anomalens_version")
        raise ModelFileError(f"{path}: exported by anomalens {version}, this is anomalens {__version__}; re-export "
                             f"the run with this version (or run it with anomalens=={version})")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ModelFileError(f"{path}: lists no model files")
    for name, digest in files.items():
        file = Path(directory) / name
        if not file.is_file():
            raise ModelFileError(f"{file}: not found (listed in {path})")
        if _sha256(file) != digest:
            raise ModelFileError(f"{file}: not the file exported with {path} (SHA-256 differs); re-export the run")
    return manifest


# --------------------------------------------------------------------------------------- runtimes
def _require(package: str, purpose: str) -> Any:
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"{purpose} needs the optional package '{package}', which is not installed: {EXTRA}") from None


class _OnnxRuntime:
    def __init__(self, model_path: Path, output_names: list[str], threads: int | None) -> None:
        ort = _require("onnxruntime", "running an ONNX export")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        self.output_names = output_names

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {"images": images})


class _OpenVINO:
    def __init__(self, model_path: Path, output_names: list[str], threads: int | None) -> None:
        ov = _require("openvino", "running an export with OpenVINO")
        core = ov.Core()
        # f32 explicitly: on CPUs with bf16 units OpenVINO would otherwise compute in bf16.
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(core.read_model(str(model_path)), "CPU", config)
        self.outputs = [self.compiled.output(name) for name in output_names]

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        result = self.compiled(images)
        return [np.asarray(result[port]) for port in self.outputs]


# ----------------------------------------------------------------------------------------- the model
class ExportedDetector:
    """An exported detector: the graph in a runtime, its decision rule and how to feed it.

    Offers what ``anomalens.workflow.predict_images`` uses of a ``Detector``: ``predict``,
    ``predict_in_chunks``, ``decision_``, ``threshold_``, ``pixel_threshold_``, ``localizes``,
    ``input_size``, ``name``.
    """

    def __init__(self, directory: str | Path, runtime: str | None = None, threads: int | None = None) -> None:
        self.directory = Path(directory)
        self.manifest = manifest = read_manifest(self.directory)
        fmt = manifest.get("format")
        runtime = runtime or ("onnxruntime" if fmt == "onnx" else "openvino")
        if runtime not in RUNTIMES:
            raise ConfigError(f"unknown runtime '{runtime}'; use one of {', '.join(RUNTIMES)}")
        if fmt == "openvino" and runtime != "openvino":
            raise ConfigError(f"{self.directory}: an OpenVINO export runs with runtime openvino only (export to onnx for onnxruntime)")
        model_file = self.directory / ("model.onnx" if fmt == "onnx" else "model.xml")
        try:
            self.decision_ = DecisionRule.from_dict(manifest["decision"])
        except (KeyError, ValueError) as exc:
            raise ModelFileError(f"{self.directory / MANIFEST_FILE}: invalid decision rule ({exc})") from None
        self.name: str = manifest["detector"]
        self.params: dict[str, Any] = manifest["params"]
        self.localizes: bool = bool(manifest["localizes"])
        self.image_channels: int = int(manifest["input"]["channels"])
        self.input_size: tuple[int, int] = (int(manifest["input"]["height"]), int(manifest["input"]["width"]))
        self.batch_size: int = int(self.params.get("batch_size") or 16)
        self.runtime = runtime
        output_names = [o["name"] for o in manifest["outputs"]]
        engine = _OnnxRuntime if runtime == "onnxruntime" else _OpenVINO
        self._run = engine(model_file, output_names, threads)

    def __repr__(self) -> str:
        return f"ExportedDetector({self.name!r}, {str(self.directory)!r}, runtime={self.runtime!r})"

    @property
    def threshold_(self) -> float:
        return self.decision_.image_threshold

    @property
    def pixel_threshold_(self) -> float | None:
        return self.decision_.pixel_threshold

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The graph on a batch: float32 (N, C, H, W) in [0, 1] at ``input_size`` → (scores (N,), maps or None)."""
        images = np.asarray(images)
        expected = (self.image_channels, *self.input_size)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise DataError(f"{self.name} export: expects images of shape (N, {', '.join(map(str, expected))}), got "
                            f"{images.shape}; use predict() with image files or arrays to have them resized")
        outputs = self._run(np.ascontiguousarray(images, dtype=np.float32))
        return outputs[0].astype(np.float32, copy=False), (outputs[1] if len(outputs) > 1 else None)

    def score(self, records: Sequence, progress: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw scores (N,) and maps (N, H, W) or None of image files, arrays or ``ImageRecord``s."""
        records = list(records)
        if not records:
            return np.zeros(0, np.float32), None
        scores, maps = [], []
        for start in range(0, len(records), self.batch_size):
            batch = np.stack([load_input(r, self.input_size, self.image_channels, self.params.get("decode", "exact"))
                              for r in records[start : start + self.batch_size]])
            s, m = self.run(batch)
            scores.append(s)
            if m is not None:
                maps.append(m)
        scores_all = np.concatenate(scores)
        maps_all = np.concatenate(maps) if maps else None
        broken = ~np.isfinite(scores_all)
        if maps_all is not None:
            broken |= ~np.isfinite(maps_all.reshape(len(maps_all), -1)).all(axis=1)
        if broken.any():
            first = records[int(np.argmax(broken))]
            raise NumericalError(f"{self.name} export: NaN or infinite scores or maps for {int(broken.sum())} of "
                                 f"{len(records)} images (first: {describe_source(getattr(first, 'source', first))})")
        return scores_all, maps_all

    def predict(self, records: Sequence, progress: bool = False) -> DetectionResult:
        """Scores, labels, maps and masks under the exported decision rule (as ``Detector.predict``)."""
        scores, maps = self.score(records, progress)
        return self.decision_.apply(scores, maps)

    def predict_in_chunks(self, records: Sequence, chunk_size: int = 64, progress: bool = False
                          ) -> Iterator[tuple[int, DetectionResult]]:
        """``predict`` over ``records`` in chunks: yields (offset of the chunk, its DetectionResult)."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        for start in range(0, len(records), chunk_size):
            yield start, self.predict(records[start : start + chunk_size], progress=progress)


def load_export(directory: str | Path, runtime: str | None = None, threads: int | None = None) -> ExportedDetector:
    """Open an export folder for prediction (runtime: onnxruntime or openvino; default from its format)."""
    if not Path(directory).is_dir():
        raise ModelFileError(f"{directory}: not found or not a folder; expected a folder written by 'anomalens export'")
    return ExportedDetector(directory, runtime, threads)


def load_model(path: str | Path, runtime: str | None = None, device: str | None = None) -> Any:
    """A run folder (torch) or an export folder (onnxruntime / openvino), for ``predict`` and ``serve``.

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


def is_export(path: str | Path) -> bool:
    """True for a folder holding an export manifest (as opposed to a run folder)."""
    return (Path(path) / MANIFEST_FILE).is_file()


def compare_outputs(ref_scores: np.ndarray, scores: np.ndarray, ref_maps: np.ndarray | None,
                    maps: np.ndarray | None) -> dict[str, float]:
    """Largest absolute and relative differences of scores and maps (runtime vs torch).

    Relative differences are taken against the scale of the reference — the largest |score| of the
    images, the largest |map value| of each image — so that values near zero (most of a map, a score
    near 0) do not inflate them.
    """
    ref_scores, scores = np.asarray(ref_scores, np.float64), np.asarray(scores, np.float64)
    score_diff = np.abs(scores - ref_scores)
    score_scale = max(float(np.abs(ref_scores).max(initial=0.0)), 1e-12)
    out = {"scores_abs": float(score_diff.max(initial=0.0)), "scores_rel": float(score_diff.max(initial=0.0)) / score_scale,
           "maps_abs": 0.0, "maps_rel": 0.0}
    if ref_maps is not None and maps is not None:
        ref, got = np.asarray(ref_maps, np.float64), np.asarray(maps, np.float64)
        diff = np.abs(got - ref).reshape(len(ref), -1)
        scale = np.maximum(np.abs(ref).reshape(len(ref), -1).max(axis=1), 1e-12)
        out["maps_abs"] = float(diff.max(initial=0.0))
        out["maps_rel"] = float((diff.max(axis=1, initial=0.0) / scale).max(initial=0.0))
    return out


__all__ = ["ExportedDetector", "compare_outputs", "is_export", "load_export", "load_input", "read_manifest",
           "resize_bilinear_antialiased"]
