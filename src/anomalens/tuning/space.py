"""The search space of ``anomalens tune``: each searched parameter as a :class:`Dimension` checked against
the detector's declaration (``anomalens.params``), the default ranges per detector, and ``--space`` files.
The format of a range is in ``anomalens.tuning``'s docstring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from anomalens.errors import ConfigError

#: The ranges that matter, per detector (``anomalens.tuning``: the format).
DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    "padim": {"layers": {"choices": [[1, 2], [1, 2, 3], [2, 3]]}, "n_features": {"low": 16, "high": 64},
              "blur_sigma": {"low": 0.0, "high": 8.0}},
    "patchcore": {"coreset_fraction": {"low": 0.01, "high": 0.25, "log": True}, "num_neighbors": {"low": 1, "high": 9},
                  "layers": {"choices": [[1, 2], [2, 3]]}, "patch_size": {"choices": [1, 3, 5]}},
    "spade": {"top_k": {"low": 1, "high": 50, "log": True}, "layers": {"choices": [[1, 2], [1, 2, 3], [2, 3]]}},
    "mahalanobis": {"levels": {"choices": [None, [-1], [-2, -1], [-3, -2, -1]]}},
}


class Dimension:
    """One searched parameter: a numeric range or a list of choices, each value accepted by its declaration."""

    def __init__(self, name: str, param: Any, spec: Any, owner: str) -> None:
        self.name = name
        where = f"search space of {owner}: {name}"
        if isinstance(spec, list):
            spec = {"choices": spec}
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: expected {{low: .., high: ..}}, {{choices: [..]}} or a list, got {spec!r}")
        unknown = set(spec) - {"low", "high", "log", "step", "choices"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                              "(accepted: low, high, log, step, choices)")
        self.choices: list[Any] | None = None
        self.log, self.step = bool(spec.get("log", False)), spec.get("step")
        if "choices" in spec:
            if set(spec) - {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
                raise ConfigError(f"{where}: choices must be a non-empty list, alone")
            # each choice checked (and converted: lists → tuples) by the declaration
            self.choices = [param.convert(owner, name, c) for c in spec["choices"]]
            return
        if param.kind not in ("int", "float") or "low" not in spec or "high" not in spec:
            raise ConfigError(f"{where}: a {param.kind} parameter is searched over choices: {{choices: [..]}}"
                              if param.kind not in ("int", "float") else f"{where}: a range needs low and high")
        self.kind = param.kind
        self.low, self.high = (param.convert(owner, name, spec[k]) for k in ("low", "high"))
        if self.low >= self.high:
            raise ConfigError(f"{where}: low must be below high, got {self.low} and {self.high}")
        if self.log and self.low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ConfigError(f"{where}: give log or step, not both")

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            # Optuna stores choices that are numbers, texts or None; lists travel as their JSON text
            texts = [json.dumps(c) for c in self.choices]
            return self.choices[texts.index(trial.suggest_categorical(self.name, texts))]
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": [list(c) if isinstance(c, tuple) else c for c in self.choices]}
        return {"low": self.low, "high": self.high, **({"log": True} if self.log else {}),
                **({"step": self.step} if self.step is not None else {})}


def default_space(detector: str) -> dict[str, Any]:
    """The search space of ``detector`` when no --space is given (``anomalens.tuning``)."""
    from anomalens.catalog import detector_class

    if detector in DEFAULT_SPACES:
        return DEFAULT_SPACES[detector]
    declared = detector_class(detector).declared_params()
    space: dict[str, Any] = {}
    epochs = declared.get("epochs")
    if epochs is not None and isinstance(epochs.default, int):
        space["epochs"] = {"low": max(1, epochs.default // 4), "high": max(2, epochs.default * 2)}
    lr = declared.get("lr")
    if lr is not None and isinstance(lr.default, float):
        space["lr"] = {"low": lr.default / 10, "high": lr.default * 10, "log": True}
    if not space:
        raise ConfigError(f"tune: {detector} has no default search space; give one with --space FILE "
                          f"(see 'anomalens params {detector}' for its parameters)")
    return space


def read_space(path: str | Path) -> dict[str, Any]:
    """A --space file: a YAML mapping of parameter → range (``anomalens.tuning``), optionally under ``space:``."""
    from anomalens.params import load_yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the search space ({getattr(exc, 'strerror', None) or exc})") from None
    space = load_yaml(text, path)
    if isinstance(space, Mapping) and set(space) == {"space"}:
        space = space["space"]
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"{path}: expected a mapping of parameter → {{low, high}} or {{choices}}")
    return {str(k).replace("-", "_"): v for k, v in space.items()}


def search_space(detector: str, space: Mapping[str, Any], fixed: Mapping[str, Any]) -> list[Dimension]:
    """The checked dimensions of ``space`` for ``detector`` (unknown, fixed-and-searched parameters refused)."""
    from anomalens.catalog import detector_class

    declared = detector_class(detector).declared_params()
    unknown = sorted(set(space) - set(declared))
    if unknown:
        raise ConfigError(f"search space of {detector}: unknown parameter(s) {', '.join(unknown)}; "
                          f"accepted: {', '.join(sorted(declared))}")
    both = sorted(set(space) & set(fixed))
    if both:
        raise ConfigError(f"tune: {', '.join(both)} is both fixed (-p) and searched (the space); give it once")
    return [Dimension(name, declared[name], spec, detector) for name, spec in space.items()]
