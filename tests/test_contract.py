"""The detector contract, checked once for every registered detector."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import anomalens
from anomalens import ConfigError, NotFittedError, create_detector, list_detectors, load_detector
from anomalens.catalog import detector_class
from anomalens.params import Param
from tests.conftest import IMAGE_SIZE, TINY_PARAMS

NAMES = list_detectors()


def test_every_detector_has_tiny_test_settings():
    assert set(NAMES) <= set(TINY_PARAMS), "add tiny settings for new detectors to tests/conftest.py"


@pytest.fixture(scope="module", params=NAMES)
def fitted(request, tiny_fit):
    return tiny_fit(request.param)


def test_unknown_detector_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="padim"):
        create_detector("nope")


@pytest.mark.parametrize("name", NAMES)
def test_every_public_method_fails_the_same_clear_way_before_fit(name, test_records, tmp_path):
    detector = create_detector(name, **TINY_PARAMS[name])
    calls = {
        "score": lambda: detector.score(test_records),
        "predict": lambda: detector.predict(test_records),
        "predict_in_chunks": lambda: next(detector.predict_in_chunks(test_records)),
        "calibrate": lambda: detector.calibrate(test_records),
        "save": lambda: detector.save(tmp_path / "run"),
        "threshold_": lambda: detector.threshold_,
    }
    if detector.reconstructs:
        calls["reconstruct"] = lambda: detector.reconstruct(test_records)
    for what, call in calls.items():
        with pytest.raises(NotFittedError, match=rf"^{name}: call fit\(\) first"):
            call()
    assert not (tmp_path / "run").exists()
    assert not detector.is_fitted


def _invalid_values(param: Param) -> list:
    """Values the declaration says are not accepted (derived from it, for every parameter)."""
    values: list = [object()]
    if param.kind in ("int", "float", "size"):
        values += ["12", True]
        if param.low is not None:
            values.append(param.low if param.low_open else param.low - 1)
        if param.high is not None:
            values.append(param.high + 1)
        if param.kind == "int":
            values.append(1.5)
    elif param.kind in ("ints", "floats"):
        values.append("1,2")
        if param.min_length >= 1:
            values.append([])
        if param.low is not None:
            values.append([param.low - 1])
    elif param.kind == "choice":
        values.append("not-an-option")
    elif param.kind == "bool":
        values += ["yes", 1]
    elif param.kind == "str":
        values.append(3)
    if not param.optional:
        values.append(None)
    return values


@pytest.mark.parametrize("name", NAMES)
def test_an_invalid_parameter_fails_at_construction_naming_it(name):
    for key, param in detector_class(name).declared_params().items():
        for value in _invalid_values(param):
            with pytest.raises(ConfigError, match=rf"^{name}: parameter {key} must be"):
                create_detector(name, **{**TINY_PARAMS[name], key: value})
    with pytest.raises(ConfigError, match="unknown parameter"):
        create_detector(name, **TINY_PARAMS[name], not_a_param=1)


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_is_declared_with_a_meaning(name):
    declared = detector_class(name).declared_params()
    detector = create_detector(name, **TINY_PARAMS[name])
    assert set(detector.params) == set(declared)
    for key, param in declared.items():
        assert param.help, f"{name}.{key} has no one-line meaning"
        if key != "device":  # ``device`` reads as the resolved torch.device
            assert getattr(detector, key) == detector.params[key]
        if param.default is not None:  # every default is itself accepted
            assert param.convert(name, key, param.default) == param.default


def test_result_shapes_and_threshold_rule(fitted, test_records):
    result = fitted.predict(test_records, progress=False)
    n = len(test_records)
    assert result.scores.shape == (n,) and np.isfinite(result.scores).all()
    np.testing.assert_array_equal(result.labels, (result.scores > fitted.threshold_).astype(int))
    if fitted.localizes:
        assert result.maps.shape == (n, IMAGE_SIZE, IMAGE_SIZE)
        assert result.maps.dtype == np.float32
        np.testing.assert_array_equal(result.masks, result.maps > fitted.pixel_threshold_)
    else:
        assert result.maps is None


def test_defects_score_higher_than_normals(fitted, test_records):
    scores = fitted.score(test_records, progress=False)[0]
    labels = np.array([r.label for r in test_records])
    assert anomalens.evaluate(labels, scores, fitted.threshold_)["image_auroc"] >= 0.9


def test_threshold_from_normals_alone_flags_few_normals(fitted, train_records):
    # The default threshold is a high quantile of held-out normal scores: fresh normals mostly pass.
    # (With 20 tiny training images only 2 are held out, so the bound is loose on purpose: the point is
    # that a threshold learned from normals alone does not flag everything.)
    from tests.conftest import make_records

    fresh = make_records(12, 0, seed=7)
    assert fitted.predict(fresh, progress=False).labels.mean() <= 0.5


def assert_same_decision(a, b) -> None:
    """Equal rules, thresholds within float rounding (the same computation repeated)."""
    close = ("image_threshold", "pixel_threshold", "map_reference")
    assert {k: v for k, v in a.to_dict().items() if k not in close} == {k: v for k, v in b.to_dict().items() if k not in close}
    for key in close:
        x, y = getattr(a, key), getattr(b, key)
        assert (x is None) == (y is None) and (x is None or x == pytest.approx(y, rel=1e-5, abs=1e-7)), key


def test_refit_after_calibrate_is_exactly_a_fresh_fit(fitted, train_records, test_records):
    """Same seed, same model; and a calibration (area rule included) does not survive a new fit."""
    if fitted.params.get("epochs", 0) >= 4:  # two 1-epoch fits cost less than one more tiny fit (DRAEM: 20 epochs)
        fitted = create_detector(fitted.name, **{**TINY_PARAMS[fitted.name], "epochs": 1}).fit(train_records, progress=False)
    detector = copy.deepcopy(fitted)  # a fitted detector, as a fresh fit would give (one fit less per detector)
    detector.calibrate(test_records, method="area" if detector.localizes else "f1", progress=False)
    assert detector.decision_.source in ("area", "f1")
    assert detector.fit(train_records, progress=False) is detector
    assert_same_decision(detector.decision_, fitted.decision_)
    assert detector.decision_.source == "quantile" and detector.decision_.min_area is None
    again, first = detector.predict(test_records, progress=False), fitted.predict(test_records, progress=False)
    np.testing.assert_allclose(again.scores, first.scores, rtol=1e-5)
    np.testing.assert_array_equal(again.labels, first.labels)


def test_save_load_round_trip(fitted, test_records, tmp_path):
    fitted.save(tmp_path / "run")
    loaded = load_detector(tmp_path / "run")
    assert type(loaded) is type(fitted) and loaded.params == fitted.params
    assert loaded.decision_ == fitted.decision_ and loaded.history_ == fitted.history_
    before, after = fitted.predict(test_records, progress=False), loaded.predict(test_records, progress=False)
    np.testing.assert_allclose(after.scores, before.scores, rtol=1e-5)
    if fitted.localizes:
        np.testing.assert_allclose(after.maps, before.maps, rtol=1e-4, atol=1e-5)


def test_predict_in_chunks_matches_predict(train_records, test_records):
    detector = create_detector("padim", **TINY_PARAMS["padim"]).fit(train_records, progress=False)
    whole = detector.predict(test_records, progress=False)
    parts = list(detector.predict_in_chunks(test_records, chunk_size=3))
    assert [start for start, _ in parts] == list(range(0, len(test_records), 3))
    np.testing.assert_allclose(np.concatenate([r.scores for _, r in parts]), whole.scores, rtol=1e-5)
    np.testing.assert_array_equal(np.concatenate([r.labels for _, r in parts]), whole.labels)
    with pytest.raises(ValueError, match="chunk_size"):
        next(detector.predict_in_chunks(test_records, chunk_size=0))



RECONSTRUCTING = {"mlp_ae", "mvtec_cae", "baseline_cae", "inception_cae", "resnet_cae", "skip_cae", "anogan",
                  "efficientgan", "ganomaly"}


def test_generative_detectors_reconstruct(fitted, test_records):
    """reconstruct() (the report's input / reconstruction / residual triplets) for every generative detector."""
    assert fitted.reconstructs == (fitted.name in RECONSTRUCTING)
    if not fitted.reconstructs:
        with pytest.raises(ConfigError, match="does not reconstruct"):
            fitted.reconstruct(test_records[:3])
        return
    inputs, outputs = fitted.reconstruct(test_records[:3])
    assert inputs.shape == outputs.shape and inputs.shape[0] == 3 and inputs.shape[-2:] == fitted.input_size
    assert inputs.min() >= 0 and inputs.max() <= 1 and outputs.min() >= 0 and outputs.max() <= 1
    assert not np.allclose(inputs, outputs, atol=1e-3)  # a real reconstruction, not the input passed through
    if fitted.name in ("anogan", "efficientgan", "ganomaly"):  # their map is |x - x̂|, channel mean
        maps = fitted.predict(test_records[:3], progress=False).maps
        np.testing.assert_allclose(np.abs(inputs - outputs).mean(1), maps, atol=1e-5)
