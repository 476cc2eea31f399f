"""Every detector by name: create one, list them, describe their parameters, load a saved one.

Listing and describing read the registry's table of built-in detectors and import no model (nor torch);
creating or loading a detector imports the module of that detector only when its class is asked for.
The contract (``anomalens.detector``) and the registry import no model.

    python -m anomalens.catalog     # rewrites anomalens/builtin_detectors.py from the model files
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomalens.errors import ConfigError, ModelFileError
from anomalens.registry import builtin_description, builtin_module, is_loaded, registered_class, registered_names

if TYPE_CHECKING:
    from anomalens.detector import Detector


def list_detectors() -> list[str]:
    """Names accepted by ``create_detector`` and ``anomalens fit`` (imports no model)."""
    return registered_names()


def detector_class(name: str) -> type[Detector]:
    """The detector class registered as ``name`` (ConfigError listing the names when unknown).

    A built-in detector's module is imported here, on first use.
    """
    module = builtin_module(name)
    if module is not None and not is_loaded(name):
        importlib.import_module(module)
    return registered_class(name)


def create_detector(name: str, **params: Any) -> Detector:
    """Build a detector by registry name with the given hyper-parameters (checked; unknown ones refused)."""
    return detector_class(name)(**params)


def describe_detector(name: str) -> dict[str, Any]:
    """{name, summary, localizes, reconstructs, params: [(name, default, accepted values, meaning)]}.

    A built-in detector whose module is not imported is described from the registry's table (no torch).
    """
    if builtin_module(name) is not None and not is_loaded(name):
        return {"name": name, **{k: v for k, v in builtin_description(name).items() if k != "module"}}
    return _live_description(detector_class(name))


def _live_description(cls: type[Detector]) -> dict[str, Any]:
    from anomalens.params import describe_params

    doc = (cls.__doc__ or "").strip()
    return {
        "name": cls.name,
        "summary": doc.splitlines()[0] if doc else "",
        "localizes": cls.localizes,
        "reconstructs": cls.reconstructs,
        "params": describe_params(cls.declared_params()),
    }


def builtin_table() -> dict[str, dict[str, Any]]:
    """The table of built-in detectors as the model files declare them (imports every model).

    ``anomalens.builtin_detectors`` holds a copy; tests/test_startup.py checks that they agree.
    """
    import pkgutil

    import anomalens.models

    for module in pkgutil.iter_modules(anomalens.models.__path__):  # each model file registers its detectors
        if not module.ispkg:
            importlib.import_module(f"anomalens.models.{module.name}")

    table = {}
    for name in registered_names():
        cls = detector_class(name)
        if cls.__module__.startswith("anomalens.models"):
            info = _live_description(cls)
            del info["name"]
            table[name] = {"module": cls.__module__, **info, "params": [tuple(row) for row in info["params"]]}
    return table


def write_builtin_table(path: str | Path | None = None) -> Path:
    """Rewrite ``anomalens/builtin_detectors.py`` from :func:`builtin_table` (one parameter per line)."""
    path = Path(path or Path(__file__).with_name("builtin_detectors.py"))
    lines = [
        '"""The built-in detectors by name: module, summary, abilities and parameter table of each.',
        "",
        "Generated from the model files by ``python -m anomalens.catalog`` (do not edit): the registry reads it so",
        "that listing and describing the detectors imports no model (nor torch); tests/test_startup.py checks that",
        'it matches the model files. A parameter row is (name, default, accepted values, meaning)."""',
        "",
        "from typing import Any",
        "",
        "DETECTORS: dict[str, dict[str, Any]] = {",
    ]
    for name, info in builtin_table().items():
        lines.append(f"    {name!r}: {{")
        lines += [f"        {key!r}: {value!r}," for key, value in info.items() if key != "params"]
        lines.append("        'params': [")
        lines += [f"            {row!r}," for row in info["params"]]
        lines += ["        ],", "    },"]
    lines.append("}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load_detector(directory: str | Path, device: str | None = None) -> Detector:
    """Load a detector saved by ``Detector.save``. Reads JSON and safetensors only: no code runs."""
    from anomalens.decision import DecisionRule
    from anomalens.persistence import CONFIG_FILE, WEIGHTS_FILE, read_config, read_weights

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


if __name__ == "__main__":
    print(f"wrote {write_builtin_table()}")
