"""Typed hyper-parameters, declared once per detector.

A detector lists its hyper-parameters as a class attribute::

    hyperparameters = {
        "epochs": Int(100, "training epochs", low=1),
        "lr": Float(0.4, "SGD learning rate", low=0, low_open=True),
        "search": Choice("exact", ("exact", "hnsw"), "patch nearest-neighbour search"),
    }

From that one declaration the constructor checks and converts every value (one clear ``ConfigError``
naming the detector, the parameter and what it accepts), ``anomalens params MODEL`` prints the table,
and the values read back from a saved run's JSON convert to the same types (tuples stay tuples).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable

from anomalens.errors import ConfigError

_MISSING = object()


@dataclass(frozen=True)
class Param:
    """One hyper-parameter: its default, its one-line meaning and the values it accepts.

    kind: "int", "float", "bool", "str", "choice", "ints" (a tuple of ints), "floats" (a tuple of floats)
        or "size" (one int or an (height, width) pair).
    low / high: inclusive bounds (``low_open`` makes the lower bound exclusive) for numbers and for
        every element of a tuple.
    choices: the accepted values of a "choice".
    length: the exact length of a tuple, when fixed; ``min_length`` its least length.
    optional: None is accepted (its meaning belongs in ``help``).
    """

    default: Any
    help: str
    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple = ()
    length: int | None = None
    min_length: int = 1
    optional: bool = False

    # -- what it accepts, in words ---------------------------------------------------------------
    def accepts(self) -> str:
        if self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "str":
            text = "a text"
        elif self.kind == "size":
            text = f"an integer{self._bounds()} or a [height, width] pair of them"
        elif self.kind in ("ints", "floats"):
            element = "integers" if self.kind == "ints" else "numbers"
            count = f"{self.length} " if self.length else ""
            text = f"a list of {count}{element}{self._bounds()}"
        else:
            text = ("an integer" if self.kind == "int" else "a number") + self._bounds()
        return text + (" or null" if self.optional else "")

    def _bounds(self) -> str:
        if self.low is not None and self.high is not None:
            return f" in {'(' if self.low_open else '['}{_fmt(self.low)}, {_fmt(self.high)}]"
        if self.low is not None:
            return f" {'>' if self.low_open else '>='} {_fmt(self.low)}"
        if self.high is not None:
            return f" <= {_fmt(self.high)}"
        return ""

    # -- checking --------------------------------------------------------------------------------
    def convert(self, owner: str, name: str, value: Any) -> Any:
        """``value`` converted to this parameter's type, or ConfigError saying what is accepted."""
        if value is None:
            if self.optional:
                return None
            raise self._error(owner, name, value)
        converted = _CONVERTERS[self.kind](self, value)
        if converted is _MISSING:
            raise self._error(owner, name, value)
        return converted

    def _error(self, owner: str, name: str, value: Any) -> ConfigError:
        return ConfigError(f"{owner}: parameter {name} must be {self.accepts()}, got {value!r}")

    def _in_range(self, number: float) -> bool:
        if isinstance(number, float) and not math.isfinite(number):
            return False
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            return False
        return self.high is None or number <= self.high


def _fmt(number: float) -> str:
    return f"{number:g}" if isinstance(number, float) else str(number)


def _as_int(value: Any) -> Any:
    if isinstance(value, bool):
        return _MISSING
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():  # 8.0 from a JSON or YAML file
        return int(value)
    return _MISSING


def _as_float(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return _MISSING
    return float(value)


def _number(element: Callable[[Any], Any]) -> Callable[[Param, Any], Any]:
    def convert(param: Param, value: Any) -> Any:
        number = element(value)
        return number if number is not _MISSING and param._in_range(number) else _MISSING

    return convert


def _sequence(element: Callable[[Any], Any]) -> Callable[[Param, Any], Any]:
    def convert(param: Param, value: Any) -> Any:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            return _MISSING
        items = tuple(element(v) for v in value)
        if any(v is _MISSING or not param._in_range(v) for v in items):
            return _MISSING
        if (param.length is not None and len(items) != param.length) or len(items) < param.min_length:
            return _MISSING
        return items

    return convert


def _size(param: Param, value: Any) -> Any:
    single = _number(_as_int)(param, value)
    if single is not _MISSING:
        return single
    pair = _sequence(_as_int)(param, value)
    return pair if pair is not _MISSING and len(pair) == 2 else _MISSING


_CONVERTERS: dict[str, Callable[[Param, Any], Any]] = {
    "int": _number(_as_int),
    "float": _number(_as_float),
    "bool": lambda p, v: v if isinstance(v, bool) else _MISSING,
    "str": lambda p, v: v if isinstance(v, str) and v else _MISSING,
    "choice": lambda p, v: v if any(v == c and type(v) is type(c) for c in p.choices) else _MISSING,
    "ints": _sequence(_as_int),
    "floats": _sequence(_as_float),
    "size": _size,
}


# -- the declaration helpers the model files use ----------------------------------------------------
def Int(default: int | None, help: str, low: int | None = None, high: int | None = None, optional: bool = False) -> Param:
    return Param(default, help, "int", low=low, high=high, optional=optional)


def Float(
    default: float | None, help: str, low: float | None = None, high: float | None = None,
    low_open: bool = False, optional: bool = False,
) -> Param:
    return Param(default, help, "float", low=low, high=high, low_open=low_open, optional=optional)


def Bool(default: bool, help: str) -> Param:
    return Param(default, help, "bool")


def Text(default: str | None, help: str, optional: bool = False) -> Param:
    """Free text: a backbone name, a file path."""
    return Param(default, help, "str", optional=optional)


def Choice(default: Any, choices: tuple, help: str, optional: bool = False) -> Param:
    return Param(default, help, "choice", choices=tuple(choices), optional=optional)


def Ints(
    default: tuple[int, ...] | None, help: str, low: int | None = None, high: int | None = None,
    length: int | None = None, optional: bool = False,
) -> Param:
    return Param(default, help, "ints", low=low, high=high, length=length, optional=optional)


def Floats(
    default: tuple[float, ...] | None, help: str, low: float | None = None, high: float | None = None,
    low_open: bool = False, length: int | None = None, optional: bool = False,
) -> Param:
    return Param(default, help, "floats", low=low, high=high, low_open=low_open, length=length, optional=optional)


def Size(default: int | None, help: str, low: int = 1, optional: bool = False) -> Param:
    return Param(default, help, "size", low=low, optional=optional)


def check_params(owner: str, declared: dict[str, Param], given: dict[str, Any]) -> dict[str, Any]:
    """Every declared parameter, with ``given`` values converted and checked, defaults for the rest.

    Unknown names are refused with the list of accepted ones.
    """
    unknown = sorted(set(given) - set(declared))
    if unknown:
        import difflib

        hints = [f"{u} → {m[0]}" for u in unknown if (m := difflib.get_close_matches(u, sorted(declared), n=1, cutoff=0.6))]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise ConfigError(
            f"{owner}: unknown parameter(s) {', '.join(unknown)}{hint}; accepted: {', '.join(sorted(declared))}"
        )
    return {name: param.convert(owner, name, given.get(name, param.default)) for name, param in declared.items()}


def describe_params(declared: dict[str, Param]) -> list[tuple[str, str, str, str]]:
    """(name, default, accepted values, meaning) rows, for ``anomalens params MODEL``."""
    rows = []
    for name, param in declared.items():
        default = param.default
        if isinstance(default, tuple):
            default = list(default)
        rows.append((name, "null" if default is None else str(default), param.accepts(), param.help))
    return rows
