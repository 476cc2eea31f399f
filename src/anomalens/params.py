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

Parameter files (``anomalens fit --config FILE``) are read here too, by :func:`read_param_file`: YAML (JSON
is YAML) through a strict safe loader that refuses a key given twice in one mapping (YAML's default is that
the last one silently wins) and refuses anchors and aliases (``&a`` / ``*a``): a hyper-parameter file has
no use for them, and a few hundred bytes of nested aliases expand to billions of elements once anything
walks them. Every message that shows a value shows it through :func:`short_repr`, bounded in size before it
is built, whatever the value (a Python caller can still pass a self-referencing or hugely shared one).
"""

from __future__ import annotations

import functools
import math
import numbers
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomalens.errors import ConfigError

_MISSING = object()

#: The most characters of a value a message shows.
SHORT_REPR_CHARS = 120


def _bounded_repr() -> reprlib.Repr:
    shown = reprlib.Repr()
    # Few levels and few elements per level: the text is built from at most ~4**3 elements, so a value
    # whose full repr would be gigabytes (shared sub-lists) costs microseconds to describe.
    shown.maxlevel = 3
    shown.maxtuple = shown.maxlist = shown.maxarray = shown.maxdict = shown.maxset = shown.maxfrozenset = 4
    shown.maxdeque = 4
    shown.maxstring = shown.maxother = shown.maxlong = 60
    return shown


_SHORT = _bounded_repr()


def short_repr(value: Any, limit: int = SHORT_REPR_CHARS) -> str:
    """``repr(value)`` for a message, bounded: nested containers cut after a few levels and elements
    (``...``), long texts and numbers elided, the whole at most ``limit`` characters on one line."""
    try:
        text = _SHORT.repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not replace the message it is part of
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        return ConfigError(f"{owner}: parameter {name} must be {self.accepts()}, got {short_repr(value)}")

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

        hints = [f"{u} → {m[0]}" for u in unknown[:5] if len(u) <= 60 and u.isprintable() and
                 (m := difflib.get_close_matches(u, sorted(declared), n=1, cutoff=0.6))]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        shown = ", ".join(u if len(u) <= 60 and u.isprintable() else short_repr(u, 60) for u in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ConfigError(
            f"{owner}: unknown parameter(s) {shown}{more}{hint}; accepted: {', '.join(sorted(declared))}"
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


# -- parameter files -----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _strict_loader() -> type:
    """yaml.SafeLoader refusing duplicate keys, anchors and aliases (module docstring); built on first use
    so that importing the parameter declarations does not import yaml."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                what = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
                raise _YamlRefusal(f"line {event.start_mark.line + 1}: {what} {short_repr(event.anchor, 40)}: anchors "
                                   "and aliases (&name / *name) are not accepted in a parameter file; write the value "
                                   "out", event.start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                    try:
                        first = seen.get(key)
                    except TypeError:  # an unhashable key: the constructor below says so
                        continue
                    if first is not None:
                        where = f"on line {line}" if first == line else f"on lines {first} and {line}"
                        raise _YamlRefusal(f"key {short_repr(key, 60)} is given twice in one mapping ({where}): "
                                           "give it once", key_node.start_mark)
                    seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


class _YamlRefusal(Exception):
    """What the strict loader refuses (turned into a ConfigError naming the file by ``load_yaml``)."""

    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.message, self.mark = message, mark


def load_yaml(text: str, name: str | Path = "YAML") -> Any:
    """``text`` parsed as YAML (or JSON) by the strict safe loader; ConfigError (one line, naming ``name``
    and the line) for invalid YAML, a key given twice, an anchor or alias, or nesting too deep to read."""
    import yaml

    try:
        return yaml.load(text, Loader=_strict_loader())
    except _YamlRefusal as exc:
        raise ConfigError(f"{name}: {exc.message}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{name}: not valid YAML or JSON{line}: {problem[:SHORT_REPR_CHARS]}") from None
    except RecursionError:
        raise ConfigError(f"{name}: not valid YAML or JSON: nested too deeply") from None


def read_param_file(path: str | Path, model: str) -> dict[str, Any]:
    """Hyper-parameters from a YAML or JSON file: a mapping with the keys of ``-p`` (optionally under
    ``params:``), or a run's ``detector.json`` (fitting from it reproduces that run). The values are not
    checked here (``check_params`` does that, by the detector's declaration); the file's structure is, each
    refusal a one-line ConfigError naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({getattr(exc, 'strerror', None) or exc})") from None
    config = load_yaml(text, path)
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping of hyper-parameters (KEY: VALUE), got {type(config).__name__}")
    named = config.get("detector", config.get("model"))
    if named is not None and named != model:
        shown = named if isinstance(named, str) and len(named) <= 60 else short_repr(named, 60)
        raise ConfigError(f"{path}: is a config of detector '{shown}', not of '{model}'")
    if "params" in config:
        config = config["params"]
        if not isinstance(config, dict):
            raise ConfigError(f"{path}: 'params' must be a mapping of hyper-parameters")
    else:
        config = {k: v for k, v in config.items() if k not in ("detector", "model")}
    return {str(k).replace("-", "_"): v for k, v in config.items()}
