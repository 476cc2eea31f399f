"""Typed hyper-parameter declarations (anomalens.params): conversion, ranges, messages, the table."""

from __future__ import annotations

import pytest

from anomalens import ConfigError
from anomalens.params import Bool, Choice, Float, Floats, Int, Ints, Size, Text, check_params, describe_params

DECLARED = {
    "epochs": Int(10, "training epochs", low=1),
    "rate": Float(0.5, "a rate", low=0.0, high=1.0, low_open=True),
    "mode": Choice("a", ("a", "b"), "which mode"),
    "flag": Bool(False, "a switch"),
    "layers": Ints((1, 2), "levels", low=0),
    "brightness": Floats((0.9, 1.1), "range", low=0.0, length=2),
    "size": Size(64, "input size"),
    "path": Text(None, "a file", optional=True),
}


def test_defaults_and_conversion():
    params = check_params("toy", DECLARED, {"epochs": 8.0, "layers": [3], "size": [32, 48], "rate": 1})
    assert params == {"epochs": 8, "rate": 1.0, "mode": "a", "flag": False, "layers": (3,),
                      "brightness": (0.9, 1.1), "size": (32, 48), "path": None}
    assert type(params["epochs"]) is int and type(params["rate"]) is float


@pytest.mark.parametrize("key, value, accepts", [
    ("epochs", 0, "an integer >= 1"),
    ("epochs", 2.5, "an integer >= 1"),
    ("epochs", True, "an integer >= 1"),
    ("epochs", "8", "an integer >= 1"),
    ("rate", 0.0, r"a number in \(0, 1\]"),
    ("rate", float("nan"), r"a number in \(0, 1\]"),
    ("mode", "c", "one of 'a', 'b'"),
    ("flag", 1, "true or false"),
    ("layers", [-1], "a list of integers >= 0"),
    ("layers", "12", "a list of integers >= 0"),
    ("brightness", [1.0], "a list of 2 numbers >= 0"),
    ("size", [1, 2, 3], r"an integer >= 1 or a \[height, width\] pair"),
    ("path", 5, "a text or null"),
    ("epochs", None, "an integer >= 1, got None"),
])
def test_a_bad_value_names_the_parameter_and_what_it_accepts(key, value, accepts):
    with pytest.raises(ConfigError, match=rf"^toy: parameter {key} must be {accepts}"):
        check_params("toy", DECLARED, {key: value})


def test_unknown_names_are_refused_with_the_accepted_list():
    with pytest.raises(ConfigError, match="unknown parameter\\(s\\) epoch \\(did you mean epoch → epochs\\?\\); accepted: brightness, epochs"):
        check_params("toy", DECLARED, {"epoch": 3})


def test_the_table_comes_from_the_declaration():
    rows = {row[0]: row for row in describe_params(DECLARED)}
    assert rows["epochs"] == ("epochs", "10", "an integer >= 1", "training epochs")
    assert rows["layers"][1] == "[1, 2]" and rows["path"][1] == "null"


def test_hyperparameters_read_as_attributes_and_cannot_be_assigned():
    from anomalens import create_detector

    detector = create_detector("padim", epsilon=0.02)
    assert detector.epsilon == 0.02 and detector.layers == (1, 2, 3)
    with pytest.raises(AttributeError, match="set when the detector is created"):
        detector.epsilon = 1.0


def test_a_parameter_clashing_with_a_method_is_refused_when_the_class_is_made():
    from anomalens.detector import Detector

    with pytest.raises(TypeError, match="clashes"):
        class Broken(Detector):  # noqa: F841
            name = "broken"
            hyperparameters = {"predict": Int(1, "oops")}
