"""Every detector by name: create one, list them, describe their parameters, load a saved one.

This is the loading path that imports ``anomalens.models`` (which registers each model file's class in
``anomalens.registry``); the contract (``anomalens.detector``) and the registry import no model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anomalens.models  # noqa: F401  (registers every detector)
from anomalens.decision import DecisionRule
from anomalens.detector import Detector
from anomalens.errors import ConfigError, ModelFileError
from anomalens.params import describe_params
from anomalens.persistence import CONFIG_FILE, WEIGHTS_FILE, read_config, read_weights
from anomalens.registry import registered_class, registered_names


def list_detectors() -> list[str]:
    """Names accepted by ``create_detector`` and ``anomalens fit``."""
    return registered_names()


def detector_class(name: str) -> type[Detector]:
    """The detector class registered as ``name`` (ConfigError listing the names when unknown)."""
    return registered_class(name)


def create_detector(name: str, **params: Any) -> Detector:
    """Build a detector by registry name with the given hyper-parameters (checked; unknown ones refused)."""
    return detector_class(name)(**params)


def describe_detector(name: str) -> dict[str, Any]:
    """{name, summary, localizes, reconstructs, params: [(name, default, accepted values, meaning)]}."""
    cls = detector_class(name)
    doc = (cls.__doc__ or "").strip()
    return {
        "name": name,
        "summary": doc.splitlines()[0] if doc else "",
        "localizes": cls.localizes,
        "reconstructs": cls.reconstructs,
        "params": describe_params(cls.declared_params()),
    }


def load_detector(directory: str | Path, device: str | None = None) -> Detector:
    """Load a detector saved by ``Detector.save``. Reads JSON and safetensors only: no code runs."""
    directory = Path(directory)
    config = read_config(directory)
    config_path = directory / CONFIG_FILE
    params = config.get("params", {})
    if not isinstance(params, dict):
        raise ModelFileError(f"{config_path}: 'params' is not a JSON object")
    params = dict(params)
    if device is not None:
        params["device"] = device
    try:
        cls = detector_class(str(config.get("detector", "?")))
        detector = cls(**params)
    except ConfigError as exc:
        raise ModelFileError(f"{config_path}: incompatible parameters ({exc})") from None
    if config.get("decision") is None:
        raise ModelFileError(f"{config_path}: has no decision rule; the detector was saved before it was fitted")
    try:
        decision = DecisionRule.from_dict(config["decision"])
    except ValueError as exc:
        raise ModelFileError(f"{config_path}: invalid decision rule ({exc})") from None
    history = config.get("history") or {}
    tensors = read_weights(directory, config)
    try:
        detector.load_fitted_state(tensors, decision, history)
    except ConfigError as exc:  # e.g. an optional dependency this model needs is not installed
        raise ModelFileError(f"{directory}: cannot load this '{cls.name}' model: {exc}") from None
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ModelFileError(f"{directory / WEIGHTS_FILE}: weights do not match the '{cls.name}' detector ({exc})") from None
    return detector
