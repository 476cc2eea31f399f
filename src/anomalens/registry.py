"""The detector registry: names → detector classes. Imports no model.

Each model file registers its class with ``@register_detector``. The names of the detectors that ship
with anomalens, the module of each and their descriptions are also known without importing any model
(``anomalens.builtin_detectors``, a table generated from the model files): ``anomalens list`` and
``anomalens params`` read it without torch, and ``anomalens.catalog`` imports a model's module only when
its class is asked for. A name can be registered once: a second class under the same name — or under
the name of a built-in detector — is refused instead of silently replacing the first (timm's
``_registry.py`` does the same).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from anomalens.builtin_detectors import DETECTORS as _BUILTIN
from anomalens.errors import ConfigError

if TYPE_CHECKING:  # annotations only: the contract module does not import the registry either
    from anomalens.detector import Detector

D = TypeVar("D", bound="type[Detector]")

_REGISTRY: dict[str, type] = {}


def register_detector(cls: D) -> D:
    """Class decorator: make ``cls`` available as ``create_detector(cls.name)``.

    Raises ValueError when the class has no name or the name is taken by another class (or belongs to a
    built-in detector defined in another module).
    """
    name = getattr(cls, "name", "")
    if not name:
        raise ValueError(f"{cls.__module__}.{cls.__qualname__} needs a non-empty class attribute 'name'")
    taken = _REGISTRY.get(name)
    if taken is None and name in _BUILTIN and cls.__module__ != _BUILTIN[name]["module"]:
        owner = f"the built-in detector in {_BUILTIN[name]['module']}"
    elif taken is not None and taken is not cls:
        owner = f"{taken.__module__}.{taken.__qualname__}"
    else:
        _REGISTRY[name] = cls
        return cls
    raise ValueError(f"detector name '{name}' is already registered by {owner}; "
                     f"{cls.__module__}.{cls.__qualname__} needs another name")


def registered_names() -> list[str]:
    """Every detector name, sorted: the built-in ones (loaded or not) and those registered since."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def builtin_module(name: str) -> str | None:
    """The module that defines the built-in detector ``name`` (None for another name)."""
    entry = _BUILTIN.get(name) if isinstance(name, str) else None
    return entry["module"] if entry else None


def is_loaded(name: str) -> bool:
    """Whether the class of ``name`` is registered in this process (its module has been imported)."""
    return isinstance(name, str) and name in _REGISTRY


def builtin_description(name: str) -> dict[str, Any]:
    """The stored description of a built-in detector: {summary, localizes, reconstructs, params}."""
    return _BUILTIN[name]


def registered_class(name: str) -> type:
    """The class registered under ``name``, or ConfigError listing the known names.

    A built-in detector whose module was not imported yet is not registered: ``anomalens.catalog``
    imports the module first (``detector_class``).
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        check_name(name)
        raise ConfigError(f"detector '{name}' is not loaded: import {builtin_module(name)} first") from None


def check_name(name: str) -> None:
    """ConfigError naming the close match and every known name, unless ``name`` is a known detector."""
    known = registered_names()
    if isinstance(name, str) and name in known:
        return
    import difflib

    close = difflib.get_close_matches(str(name).lower(), known, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ConfigError(f"unknown detector '{name}'; {hint}available: {', '.join(known)}")
