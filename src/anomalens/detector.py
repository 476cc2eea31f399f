"""The one contract every detector follows, its typed result, the registry and the threshold rule.

A detector is used like a scikit-learn estimator:

    det = create_detector("padim", backbone="efficientnet_lite0")
    det.fit(train_records)                     # normal images only
    result = det.predict(test_records)         # DetectionResult: scores, labels, maps, masks
    det.save("runs/x"); det = load_detector("runs/x")

Rules shared by all detectors:
- the constructor only stores hyper-parameters; fitted state lives in attributes ending in ``_``;
- higher score = more anomalous; an image is anomalous when ``score > threshold_``;
- detectors that localise return anomaly maps at the resolution of their input tensors
  (``image_size``), and a pixel is anomalous when ``map > pixel_threshold_``;
- by default ``fit`` holds out a fraction of the normal images and sets both thresholds to a high
  quantile of their scores, so a threshold exists without any defective sample (see ``thresholds``).
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import torch

from anomalens import __version__
from anomalens.errors import ConfigError, ModelFileError
from anomalens.progress import iterate_progress  # noqa: F401  (re-exported for model files)
from anomalens.thresholds import area_threshold_search, f1_threshold, largest_defect_areas, quantile_threshold

FORMAT_VERSION = 1
CONFIG_FILE = "detector.json"
WEIGHTS_FILE = "weights.safetensors"


@dataclass
class DetectionResult:
    """Per-image outputs of a detector, for N images.

    scores: (N,) float, higher = more anomalous.
    labels: (N,) int, 1 where ``score > threshold``.
    maps:   (N, H, W) float32 anomaly maps at the input resolution, or None (image-level detector).
    masks:  (N, H, W) bool predicted defect masks (``map > pixel_threshold``), or None.
    """

    scores: np.ndarray
    labels: np.ndarray
    maps: np.ndarray | None = None
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)


# ----------------------------------------------------------------------------------------- registry
_REGISTRY: dict[str, type["Detector"]] = {}


def register_detector(cls: type["Detector"]) -> type["Detector"]:
    """Class decorator: make a detector available to ``create_detector(cls.name)``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a registry name")
    _REGISTRY[cls.name] = cls
    return cls


def _import_models() -> None:
    # Importing the package runs each model file's @register_detector.
    import anomalens.models  # noqa: F401


def list_detectors() -> list[str]:
    """Names accepted by ``create_detector`` and ``anomalens fit``."""
    _import_models()
    return sorted(_REGISTRY)


def detector_class(name: str) -> type["Detector"]:
    _import_models()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown detector '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_detector(name: str, **params: Any) -> "Detector":
    """Build a detector by registry name with the given hyper-parameters (unknown ones are refused)."""
    return detector_class(name)(**params)


# --------------------------------------------------------------------------------------- contract
def resolve_device(device: str) -> torch.device:
    """'auto' → CUDA when available, else CPU. Explicit 'cuda' without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ConfigError(f"unknown device '{device}'; use auto, cpu or cuda")
    return torch.device(device)


class Detector(ABC):
    """Base class of every anomaly detector. Subclasses implement ``_fit`` and ``_score``.

    Class attributes:
        name: registry name.
        localizes: whether ``_score`` returns anomaly maps.
        defaults: the hyper-parameters and their defaults (the constructor accepts exactly these).
    """

    name: ClassVar[str] = ""
    localizes: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {}

    # Hyper-parameters every detector has, on top of its own ``defaults``.
    common_defaults: ClassVar[dict[str, Any]] = {
        "image_size": 256,
        "batch_size": 16,
        "device": "auto",
        "seed": 0,
        "threshold_quantile": 0.99,  # quantile of held-out normal scores used as threshold
        "holdout_fraction": 0.1,  # share of training normals held out to set thresholds
    }

    def __init__(self, **params: Any) -> None:
        allowed = {**self.common_defaults, **self.defaults}
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ConfigError(
                f"{self.name}: unknown parameter(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(sorted(allowed))}"
            )
        # Tuples become lists so that parameters read back from JSON compare equal.
        self.params: dict[str, Any] = {k: list(v) if isinstance(v, tuple) else v for k, v in {**allowed, **params}.items()}
        self.threshold_: float | None = None
        self.pixel_threshold_: float | None = None
        self.threshold_source_: str | None = None
        self.map_reference_: float | None = None  # typical anomaly-map value on normal images
        self.min_area_: int | None = None  # set by calibrate(method="area"): the seed's region rule
        self.area_clear_border_: bool = False
        self.history_: dict[str, list[float]] = {}

    def __getattr__(self, key: str) -> Any:
        # Hyper-parameters read as attributes (det.image_size); only called when normal lookup fails.
        params = self.__dict__.get("params")
        if params is not None and key in params:
            return params[key]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {key!r}")

    def __repr__(self) -> str:
        defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in {**self.common_defaults, **self.defaults}.items()}
        changed = {k: v for k, v in self.params.items() if v != defaults.get(k)}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    @property
    def device(self) -> torch.device:
        return resolve_device(self.params["device"])

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the tensors the detector sees; ``image_size`` may be one int or a pair."""
        size = self.params["image_size"]
        return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))

    @property
    def is_fitted(self) -> bool:
        return self.threshold_ is not None

    # -- what subclasses implement ------------------------------------------------------------
    @abstractmethod
    def _fit(self, records: Sequence, progress: bool) -> None:
        """Learn what normal looks like from ``records`` (normal images)."""

    @abstractmethod
    def _score(self, records: Sequence, progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Return (scores (N,), maps (N, H, W) float32 or None)."""

    @abstractmethod
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        """Fitted tensors to persist (safetensors)."""

    @abstractmethod
    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore fitted tensors saved by ``_state_tensors``."""

    # -- the public contract ------------------------------------------------------------------
    def fit(self, records: Sequence, progress: bool = True) -> "Detector":
        """Fit on normal images and set thresholds from held-out normals. Returns self."""
        records = list(records)
        if not records:
            raise ValueError(f"{self.name}: no training images")
        fit_records, holdout = self._split_holdout(records)
        torch.manual_seed(self.params["seed"])
        scores, maps = self._fit_and_score_holdout(fit_records, holdout, progress)
        self._set_quantile_thresholds(scores, maps)
        return self

    def _fit_and_score_holdout(self, fit_records: list, holdout: list, progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Fit on ``fit_records``; return the scores and maps of ``holdout`` from a model that never saw them.

        Detectors whose fit is a sum over images override this to fit the final model on every image
        (the held-out ones too) while still scoring the held-out images without them (PaDiM).
        ``holdout is fit_records`` when nothing is held out.
        """
        self._fit(fit_records, progress)
        return self._score(holdout, progress)

    def _split_holdout(self, records: list) -> tuple[list, list]:
        """Hold out a seeded random share of normals for the threshold (at least 1, if possible)."""
        from anomalens.data import split_records

        kept, held = split_records(records, float(self.params["holdout_fraction"]), self.params["seed"])
        # Nothing held out: thresholds come from the training images themselves (optimistic).
        return (kept, held) if held else (records, records)

    def _set_quantile_thresholds(self, scores: np.ndarray, maps: np.ndarray | None) -> None:
        q = float(self.params["threshold_quantile"])
        self.threshold_ = quantile_threshold(scores, q)
        if maps is not None:
            self.pixel_threshold_ = quantile_threshold(maps.reshape(len(maps), -1).max(axis=1), q)
            self.map_reference_ = float(np.median(maps))
        self.threshold_source_ = f"quantile {q} of {len(scores)} held-out normal images"

    def score(self, records: Sequence, progress: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw anomaly scores (N,) and maps (N, H, W) or None, without thresholding."""
        self._check_fitted()
        records = list(records)
        if not records:
            return np.zeros(0, np.float32), None
        return self._score(records, progress)

    def predict(self, records: Sequence, progress: bool = True) -> DetectionResult:
        """Scores, labels, maps and predicted masks (``map > pixel_threshold_``) for each image.

        Labels follow ``score > threshold_``, or, after ``calibrate(method="area")``, the seed's rule:
        a region of the predicted mask (not touching the border) with at least ``min_area_`` pixels.
        """
        scores, maps = self.score(records, progress)
        masks = None
        if maps is not None and self.pixel_threshold_ is not None:
            masks = maps > self.pixel_threshold_
        if self.min_area_ is not None and maps is not None:
            labels = largest_defect_areas(maps, self.pixel_threshold_, self.area_clear_border_) >= self.min_area_
        else:
            labels = scores > self.threshold_
        return DetectionResult(scores=scores, labels=labels.astype(np.int64), maps=maps, masks=masks)

    def predict_in_chunks(
        self, records: Sequence, chunk_size: int = 64, progress: bool = False
    ) -> Iterator[tuple[int, DetectionResult]]:
        """``predict`` over ``records`` in chunks: yields (offset of the chunk, its DetectionResult).

        For scoring many images with bounded memory: only one chunk's maps exist at a time (with
        ``predict`` on N images the N full-resolution maps are returned together, 0.26 MB per image
        at 256 px). ``anomalens predict`` works this way.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        for start in range(0, len(records), chunk_size):
            yield start, self.predict(records[start : start + chunk_size], progress=progress)

    def calibrate(
        self,
        records: Sequence,
        method: str = "f1",
        normal_records: Sequence = (),
        clear_border: bool = False,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Re-set the decision rule on labelled ``records``.

        method="f1": the F1-optimal image threshold. Without anomalous images the F1 rule is undefined;
            the threshold is then re-estimated as the normal-score quantile instead of flagging
            everything, and the returned note says so.
        method="area" (localising detectors): the seed's finetune — a pixel threshold and a minimum
            defect area (see ``thresholds.area_threshold_search``); ``normal_records`` are the
            validation normals of its first step (defaults to the normal images among ``records``);
            ``clear_border`` ignores regions touching the border, as the 2021 reference code did.
        """
        records = list(records)
        labels = np.array([r.label for r in records], dtype=np.int64)
        scores, maps = self.score(records, progress)
        if method == "area":
            if maps is None:
                raise ConfigError(f"{self.name} gives no anomaly maps: use calibrate method 'f1'")
            normal_maps = self.score(list(normal_records), progress)[1] if len(normal_records) else maps[labels == 0]
            if normal_maps is None or len(normal_maps) == 0:
                raise ValueError("the area calibration needs normal images")
            found = area_threshold_search(normal_maps, maps, labels, clear_border=clear_border, progress=progress)
            self.min_area_, self.pixel_threshold_ = found["min_area"], found["threshold"]
            self.area_clear_border_ = clear_border
            self.threshold_source_ = f"area rule: region ≥ {self.min_area_} px above {self.pixel_threshold_:.4g}; {found['note']}"
            return {"threshold": self.threshold_, "pixel_threshold": self.pixel_threshold_, "min_area": self.min_area_,
                    "balanced_accuracy": found["score"], "note": found["note"]}
        if method != "f1":
            raise ConfigError(f"unknown calibration method '{method}'; use f1 or area")
        self.min_area_ = None
        threshold = f1_threshold(labels, scores)
        if threshold is None:
            normal = scores[labels == 0]
            if len(normal) == 0:
                raise ValueError("calibration data has no normal image; cannot set a threshold")
            self._set_quantile_thresholds(normal, None if maps is None else maps[labels == 0])
            note = (
                "calibration data has no anomalous image: threshold set to the "
                f"{self.params['threshold_quantile']} quantile of its {len(normal)} normal scores"
            )
        else:
            self.threshold_ = threshold
            self.threshold_source_ = f"F1-optimal on {len(labels)} labelled images ({int(labels.sum())} anomalous)"
            if maps is not None and self.score_is_map_max:
                # For max-of-map detectors the image threshold is exactly a pixel threshold too.
                self.pixel_threshold_ = threshold
            note = self.threshold_source_
        return {"threshold": self.threshold_, "pixel_threshold": self.pixel_threshold_, "note": note}

    #: True for detectors whose image score is the maximum of their anomaly map.
    score_is_map_max: ClassVar[bool] = False

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"{self.name}: call fit() before scoring")

    # -- persistence --------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "library": "anomalens",
            "library_version": __version__,
            "detector": self.name,
            "params": self.params,
            "threshold": self.threshold_,
            "pixel_threshold": self.pixel_threshold_,
            "threshold_source": self.threshold_source_,
            "map_reference": self.map_reference_,
            "min_area": self.min_area_,
            "area_clear_border": self.area_clear_border_,
            "history": self.history_,
            "preprocessing": self.preprocessing(),
        }

    def preprocessing(self) -> dict[str, Any]:
        """How images are turned into tensors (saved for users re-implementing the pipeline)."""
        return {"resize": self.params["image_size"], "scale": "[0, 1]", "interpolation": "bilinear, antialiased"}

    def save(self, directory: str | Path) -> Path:
        """Write ``detector.json`` + ``weights.safetensors`` into ``directory`` (no pickle)."""
        from safetensors.torch import save_file

        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self._state_tensors().items()}
        tmp_weights = directory / (WEIGHTS_FILE + ".tmp")
        save_file(tensors, str(tmp_weights))
        tmp_config = directory / (CONFIG_FILE + ".tmp")
        tmp_config.write_text(json.dumps(self.config(), indent=2, default=_json_default))
        os.replace(tmp_weights, directory / WEIGHTS_FILE)
        os.replace(tmp_config, directory / CONFIG_FILE)
        return directory

    def update_saved_thresholds(self, directory: str | Path) -> None:
        """Rewrite only ``detector.json`` (after calibrate), atomically."""
        path = Path(directory) / CONFIG_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.config(), indent=2, default=_json_default))
        os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (tuple, Path)):
        return list(value) if isinstance(value, tuple) else str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def load_detector(directory: str | Path, device: str | None = None) -> Detector:
    """Load a detector saved by ``Detector.save``. Reads JSON and safetensors only: no code runs."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    weights_path = directory / WEIGHTS_FILE
    if not config_path.is_file():
        raise ModelFileError(f"{config_path}: not found; is '{directory}' a run folder written by 'anomalens fit'?")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("library") != "anomalens":
        raise ModelFileError(f"{config_path}: not an anomalens detector file")
    if config.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{config_path}: file format version {config.get('format_version')} is not supported by "
            f"anomalens {__version__} (expects {FORMAT_VERSION}); refit the model with this version"
        )
    params = dict(config.get("params", {}))
    if device is not None:
        params["device"] = device
    cls = detector_class(config.get("detector", "?"))
    try:
        detector = cls(**params)
    except ConfigError as exc:
        raise ModelFileError(f"{config_path}: incompatible parameters ({exc})") from None
    try:
        tensors = load_file(str(weights_path))
    except FileNotFoundError:
        raise ModelFileError(f"{weights_path}: not found") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{weights_path}: corrupt or unreadable weights ({exc})") from None
    try:
        detector._load_state_tensors(tensors)
    except ConfigError as exc:  # e.g. an optional dependency this model needs is not installed
        raise ModelFileError(f"{directory}: cannot load this '{cls.name}' model: {exc}") from None
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ModelFileError(f"{weights_path}: weights do not match the '{cls.name}' detector ({exc})") from None
    detector.threshold_ = config.get("threshold")
    detector.pixel_threshold_ = config.get("pixel_threshold")
    detector.threshold_source_ = config.get("threshold_source")
    detector.history_ = config.get("history", {})
    detector.map_reference_ = config.get("map_reference")
    detector.min_area_ = config.get("min_area")
    detector.area_clear_border_ = bool(config.get("area_clear_border", False))
    if detector.threshold_ is None:
        raise ModelFileError(f"{config_path}: has no threshold; the detector was saved before it was fitted")
    return detector
