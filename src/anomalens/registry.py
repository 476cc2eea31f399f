"""The detector registry: names → detector classes. Imports no model.

Each model file registers its class with ``@register_detector``; ``anomalens.models`` imports every model
file, so whoever needs the full list (``create_detector``, ``load_detector``, the CLI) imports that
package, never the other way round. A name can be registered once: a second class under the same name is
refused instead of silently replacing the first (timm's ``_registry.py`` does the same).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from anomalens.errors import ConfigError

if TYPE_CHECKING:  # annotations only: the contract module does not import the registry either
    from anomalens.detector import Detector

D = TypeVar("D", bound="type[Detector]")

_REGISTRY: dict[str, type] = {}


def register_detector(cls: D) -> D:
    """Class decorator: make ``cls`` available as ``create_detector(cls.name)``.

    Raises ValueError when the class has no name or the name is taken by another class.
    """
    name = getattr(cls, "name", "")
    if not name:
        raise ValueError(f"{cls.__module__}.{cls.__qualname__} needs a non-empty class attribute 'name'")
    taken = _REGISTRY.get(name)
    if taken is not None and taken is not cls:
        raise ValueError(
            f"detector name '{name}' is already registered by {taken.__module__}.{taken.__qualname__}; "
            f"{cls.__module__}.{cls.__qualname__} needs another name"
        )
    _REGISTRY[name] = cls
    return cls


def registered_names() -> list[str]:
    """The names registered so far, sorted (import ``anomalens.models`` first for the full list)."""
    return sorted(_REGISTRY)


def registered_class(name: str) -> type:
    """The class registered under ``name``, or ConfigError listing the registered names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(str(name).lower(), sorted(_REGISTRY), n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown detector '{name}'; {hint}available: {', '.join(sorted(_REGISTRY))}") from None
