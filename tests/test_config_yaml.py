"""Parameter files (``fit --config``) and messages that show a parameter's value: strict, and bounded.

A key given twice is refused (YAML's default lets the last one win silently); anchors and aliases are
refused (a few hundred bytes of nested aliases are billions of elements to anything that walks them);
every message that shows a value is built from a bounded repr.
"""

from __future__ import annotations

import json
import time

import pytest

from anomalens import ConfigError, create_detector
from anomalens.params import (
    SHORT_REPR_CHARS,
    Int,
    check_params,
    load_yaml,
    read_param_file,
    short_repr,
)


def _laughs(levels: int = 9) -> str:
    """The billion-laughs document: level k is a list of nine level k-1 aliases (9**9 strings at the top)."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for k in range(1, levels):
        name, previous = chr(ord("a") + k), chr(ord("a") + k - 1)
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    return "\n".join(lines) + f"\nn_features: *{chr(ord('a') + levels - 1)}\n"


def _write(tmp_path, text: str, name: str = "padim.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _one_line(message: str) -> bool:
    return "\n" not in message and len(message) < 400


def test_a_plain_yaml_file_gives_its_parameters(tmp_path):
    path = _write(tmp_path, "# a small PaDiM\nn_features: 40\nblur-sigma: 2.0\nlayers: [1, 2]\nweights: null\n")
    assert read_param_file(path, "padim") == {"n_features": 40, "blur_sigma": 2.0, "layers": [1, 2], "weights": None}


def test_a_runs_detector_json_gives_its_params(tmp_path):
    saved = {"detector": "padim", "version": "x", "params": {"n_features": 50, "image_size": [64, 96]},
             "decision": {"source": "quantile", "image_threshold": 1.5}}
    path = _write(tmp_path, json.dumps(saved, indent=2), "detector.json")
    assert read_param_file(path, "padim") == {"n_features": 50, "image_size": [64, 96]}


@pytest.mark.parametrize("text, says", [
    ("n_features: 40\nepsilon: 0.1\nn_features: 50\n", "key 'n_features' is given twice in one mapping (on lines 1 and 3)"),
    ("params:\n  n_features: 40\n  n_features: 40\n", "key 'n_features' is given twice in one mapping (on lines 2 and 3)"),
    ("{n_features: 40, n_features: 50}", "key 'n_features' is given twice in one mapping (on line 1)"),
    ('{"params": {"epsilon": 0.1}, "params": {"epsilon": 0.2}}', "key 'params' is given twice"),
    ("n_features: 40\n'n_features': 40\n", "key 'n_features' is given twice"),  # same key, spelt differently
])
def test_a_key_given_twice_is_refused_in_one_line_naming_it(tmp_path, text, says):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        read_param_file(path, "padim")
    message = str(info.value)
    assert message.startswith(f"{path}: ") and says in message and _one_line(message), message


def test_the_same_key_in_different_mappings_is_fine(tmp_path):
    path = _write(tmp_path, "detector: padim\nparams:\n  detector_option: 1\n  nested: {detector: 2}\n")
    assert read_param_file(path, "padim") == {"detector_option": 1, "nested": {"detector": 2}}


@pytest.mark.parametrize("text", [
    _laughs(),
    "image_size: &s 64\ntile_size: *s\n",
    "base: &b {n_features: 40}\nparams:\n  <<: *b\n",
])
def test_anchors_and_aliases_are_refused_before_anything_expands(tmp_path, text):
    path = _write(tmp_path, text)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        read_param_file(path, "padim")
    message = str(info.value)
    assert "anchors and aliases" in message and "line " in message and _one_line(message), message
    assert time.perf_counter() - start < 5


def test_the_billion_laughs_file_is_small():
    assert len(_laughs().encode()) < 800


@pytest.mark.parametrize("text, says", [
    ("n_features: [1, 2", "not valid YAML or JSON (line"),
    ("[" * 20000 + "]" * 20000, "not valid YAML or JSON"),
    ("? [a, b]\n: 1\n", "not valid YAML or JSON"),
    ("x: !!python/object/apply:os.system [ls]\n", "not valid YAML or JSON"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("detector: patchcore\n", "detector 'patchcore', not of 'padim'"),
    ("detector: " + "x" * 5000 + "\n", "not of 'padim'"),
    ("detector: [" + ", ".join(["[1, 2, 3, 4, 5]"] * 500) + "]\n", "not of 'padim'"),
    ("params: 3\n", "'params' must be a mapping"),
])
def test_a_bad_file_is_one_bounded_line(tmp_path, text, says):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        read_param_file(path, "padim")
    assert says in str(info.value) and _one_line(str(info.value)), str(info.value)


def test_an_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="no.yaml: cannot read the config file"):
        read_param_file(tmp_path / "no.yaml", "padim")
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"n_features: \xe9\n")
    with pytest.raises(ConfigError, match="cannot read the config file"):
        read_param_file(path, "padim")


# ------------------------------------------------------------------------------- values in messages
def _shared(levels: int = 40) -> list:
    """A Python value whose full repr would be 4**40 elements long: shared sub-lists, nothing recursive."""
    value: list = ["lol"]
    for _ in range(levels):
        value = [value, value, value, value]
    return value


@pytest.mark.parametrize("value", [
    _shared(),
    "x" * 10_000_000,
    "many\nlines\n" * 1000,
    -(10 ** 5000),  # a number too long for repr (Python's int-to-str limit)
    {str(i): i for i in range(100_000)},
    {"a": _shared()},
], ids=["shared-lists", "long-text", "many-lines", "huge-int", "big-dict", "nested"])
def test_a_bad_parameter_value_is_shown_bounded_and_on_one_line(value):
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        check_params("toy", {"epochs": Int(10, "training epochs", low=1)}, {"epochs": value})
    message = str(info.value)
    assert message.startswith("toy: parameter epochs must be an integer >= 1, got ")
    assert _one_line(message) and len(message) <= 60 + SHORT_REPR_CHARS, message
    assert time.perf_counter() - start < 2


def test_a_detector_refuses_a_huge_shared_value_quickly():
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="parameter n_features must be") as info:
        create_detector("padim", n_features=_shared())
    assert _one_line(str(info.value)) and time.perf_counter() - start < 2


def test_unknown_names_are_shown_bounded():
    given = {"x" * 100_000: 1, "bad\nname": 2, **{f"unknown_{i}": i for i in range(50)}}
    with pytest.raises(ConfigError) as info:
        check_params("toy", {"epochs": Int(10, "training epochs", low=1)}, given)
    message = str(info.value)
    assert _one_line(message) and "and 42 more" in message, message


def test_short_repr_survives_a_broken_repr():
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert short_repr(Broken()).startswith("<Broken")
    assert short_repr([1, 2]) == "[1, 2]" and short_repr("abc") == "'abc'"


def test_load_yaml_names_its_source():
    with pytest.raises(ConfigError, match=r"^settings: key 'a' is given twice"):
        load_yaml("a: 1\na: 2\n", "settings")
    assert load_yaml("a: [1, 2]\nb: {c: null}\n") == {"a": [1, 2], "b": {"c": None}}
