"""The decision rule: one object that fit creates, calibrate replaces, predict applies, save / load keep."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomalens import DecisionRule, ModelFileError, create_detector, load_detector
from anomalens.thresholds import largest_defect_areas
from tests.conftest import TINY_PARAMS


@pytest.fixture(scope="module")
def padim(train_records):
    return create_detector("padim", **TINY_PARAMS["padim"]).fit(train_records, progress=False)


def test_fit_creates_a_quantile_rule_from_out_of_fold_normal_scores(padim):
    rule = padim.decision_
    assert rule.source == "quantile" and rule.min_area is None
    # Every one of the 20 training images, each scored leave-one-out (PaDiM's default threshold_folds=0).
    assert {k: v for k, v in rule.evidence.items() if k != "normal_scores"} == {"false_alarm_rate": 0.01, "n_normal": 20, "folds": 20}
    assert "leave-one-out" in rule.description and rule.score_reference is not None
    # the scores themselves are kept (the service's drift test compares live scores with them)
    normal = rule.evidence["normal_scores"]
    assert len(normal) == 20 and min(normal) <= rule.image_threshold <= max(normal)
    assert padim.threshold_ == rule.image_threshold and padim.pixel_threshold_ == rule.pixel_threshold


def test_a_detector_that_does_not_cross_fit_keeps_the_hold_out(train_records):
    rule = create_detector("mahalanobis", **TINY_PARAMS["mahalanobis"]).fit(train_records, progress=False).decision_
    assert {k: v for k, v in rule.evidence.items() if k != "normal_scores"} == {"false_alarm_rate": 0.01, "n_normal": 2, "folds": 1}  # 10 % of 20 training images
    assert "held-out" in rule.description


def test_predict_applies_the_rule(padim, test_records):
    result = padim.predict(test_records, progress=False)
    np.testing.assert_array_equal(result.labels, padim.decision_.labels(result.scores, result.maps))
    np.testing.assert_array_equal(result.masks, result.maps > padim.decision_.pixel_threshold)


def test_area_calibration_replaces_the_rule_and_predict_follows_it(train_records, test_records):
    det = create_detector("padim", **TINY_PARAMS["padim"]).fit(train_records, progress=False)
    before = det.decision_
    info = det.calibrate(test_records, method="area", progress=False)
    rule = det.decision_
    assert rule is not before and rule.source == "area" and rule.min_area == info["min_area"]
    assert rule.evidence["n_labelled"] == len(test_records)
    result = det.predict(test_records, progress=False)
    expected = largest_defect_areas(result.maps, rule.pixel_threshold) >= rule.min_area
    np.testing.assert_array_equal(result.labels, expected.astype(int))


def test_calibrate_then_refit_forgets_the_area_rule(train_records, test_records):
    """Regression: a new fit() used to keep min_area_ while the source said 'quantile'."""
    det = create_detector("padim", **TINY_PARAMS["padim"]).fit(train_records, progress=False)
    fresh = det.decision_
    det.calibrate(test_records, method="area", progress=False)
    det.fit(train_records, progress=False)
    assert det.decision_.min_area is None and det.decision_.source == "quantile"
    assert det.decision_ == fresh
    result = det.predict(test_records, progress=False)
    np.testing.assert_array_equal(result.labels, (result.scores > fresh.image_threshold).astype(int))


def test_f1_calibration_after_area_drops_the_area_rule(train_records, test_records):
    det = create_detector("padim", **TINY_PARAMS["padim"]).fit(train_records, progress=False)
    det.calibrate(test_records, method="area", progress=False)
    det.calibrate(test_records, method="f1", progress=False)
    assert det.decision_.source == "f1" and det.decision_.min_area is None
    # PaDiM's score is the maximum of its map: the F1 threshold is a pixel threshold too.
    assert det.decision_.pixel_threshold == det.decision_.image_threshold


def test_the_rule_round_trips_through_save_and_load(train_records, test_records, tmp_path):
    det = create_detector("padim", **TINY_PARAMS["padim"]).fit(train_records, progress=False)
    det.calibrate(test_records, method="area", clear_border=True, progress=False)
    det.save(tmp_path / "run")
    assert load_detector(tmp_path / "run").decision_ == det.decision_
    saved = json.loads((tmp_path / "run" / "detector.json").read_text())
    assert saved["format_version"] == 3 and saved["decision"]["source"] == "area"


def test_save_decision_rewrites_only_the_rule(padim, train_records, test_records, tmp_path):
    det = create_detector("padim", **TINY_PARAMS["padim"]).fit(train_records, progress=False)
    det.save(tmp_path / "run")
    weights = (tmp_path / "run" / "weights.safetensors").read_bytes()
    det.calibrate(test_records, method="f1", progress=False)
    det.save_decision(tmp_path / "run")
    assert load_detector(tmp_path / "run").decision_ == det.decision_
    assert (tmp_path / "run" / "weights.safetensors").read_bytes() == weights


def _weights_as_saved_before_format_3(run) -> str:
    """Drop the format from the weights' metadata, as versions before 3 saved them; returns the new hash."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from anomalens.persistence import file_sha256

    weights = run / "weights.safetensors"
    with safe_open(str(weights), framework="pt") as fh:
        metadata, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    metadata.pop("format_version")
    save_file(tensors, str(weights), metadata=metadata)
    return file_sha256(weights)


def test_a_version_1_run_still_loads(padim, tmp_path):
    """Runs saved before the decision rule existed kept its fields as loose keys."""
    padim.save(tmp_path / "run")
    path = tmp_path / "run" / "detector.json"
    config = json.loads(path.read_text())
    rule = config.pop("decision")
    config.pop("decision_sha256")
    config["weights_sha256"] = _weights_as_saved_before_format_3(tmp_path / "run")
    config.update(format_version=1, threshold=rule["image_threshold"], pixel_threshold=rule["pixel_threshold"],
                  threshold_source=rule["description"], map_reference=rule["map_reference"], min_area=None,
                  area_clear_border=False)
    path.write_text(json.dumps(config))
    loaded = load_detector(tmp_path / "run")
    assert loaded.decision_.image_threshold == padim.threshold_ and loaded.decision_.source == "quantile"


@pytest.mark.parametrize("change, message", [
    ({"image_threshold": float("nan")}, "finite"),
    ({"image_threshold": "high"}, "must be a number"),
    ({"source": "guess"}, "source must be one of"),
    ({"min_area": 0}, "minimum-area"),
    ({"colour": "red"}, "unknown field"),
])
def test_a_tampered_rule_is_refused_with_one_line(padim, tmp_path, change, message):
    padim.save(tmp_path / "run")
    path = tmp_path / "run" / "detector.json"
    config = json.loads(path.read_text())
    config["decision"].update(change)
    path.write_text(json.dumps(config).replace("NaN", "NaN"))
    with pytest.raises(ModelFileError, match=message):
        load_detector(tmp_path / "run")


def test_the_rule_is_immutable():
    rule = DecisionRule(image_threshold=1.0, source="quantile", description="x")
    with pytest.raises(AttributeError):
        rule.image_threshold = 2.0  # type: ignore[misc]
    assert rule.with_changes(image_threshold=2.0).image_threshold == 2.0 and rule.image_threshold == 1.0


# ---------------------------------------------------------------- every kind of rule, one list of weaknesses
def test_every_kind_of_rule_is_built_in_the_decision_module():
    from anomalens.decision import area_rule, f1_rule

    rng = np.random.default_rng(0)
    normal = rng.random((6, 16, 16)).astype(np.float32)
    defect = normal.copy()
    defect[:, 4:10, 4:10] += 2.0
    maps = np.concatenate([normal, defect])
    scores = maps.reshape(len(maps), -1).max(1)
    labels = np.array([0] * 6 + [1] * 6)
    quantile = DecisionRule.from_normal_scores(scores[:6], maps[:6], 0.01, "held-out normal images", folds=1)
    assert quantile.source == "quantile"
    f1, note = f1_rule(quantile, labels, scores, maps, 0.01, pixel_is_image_threshold=True)
    assert f1.source == "f1" and f1.pixel_threshold == f1.image_threshold and note == f1.description
    fallback, note = f1_rule(quantile, labels[:6], scores[:6], maps[:6], 0.01, pixel_is_image_threshold=True)
    assert fallback.source == "quantile" and "no anomalous image" in note  # never a rule that flags everything
    area, found = area_rule(quantile, normal, maps, labels)
    assert area.source == "area" and area.min_area == found["min_area"] and area.image_threshold == quantile.image_threshold


def test_fit_logs_the_weaknesses_the_report_shows(caplog, train_records):
    from anomalens.decision import weaknesses
    from anomalens.report import report_warnings

    with caplog.at_level("WARNING", logger="anomalens"):
        det = create_detector("mlp_ae", **{**TINY_PARAMS["mlp_ae"], "epochs": 1, "holdout_fraction": 0.0})
        det.fit(train_records[:8], progress=False)
    listed = weaknesses(det.decision_)
    assert len(listed) == 2 and any("only 8 normal score" in w for w in listed)
    assert any("training images themselves" in w for w in listed)
    logged = [r.getMessage() for r in caplog.records]
    assert all(f"mlp_ae: {w}" in logged for w in listed)
    assert report_warnings({}, det.decision_) == listed  # the report: the same sentences, nothing of its own here


def test_identical_normal_scores_are_a_weakness():
    from anomalens.decision import weaknesses

    alike = DecisionRule.from_normal_scores(np.full(40, 3.0) + np.arange(40) * 1e-9, None, 0.01)
    assert any("identical copies" in w for w in weaknesses(alike))
    assert weaknesses(DecisionRule.from_normal_scores(np.arange(40.0), None, 0.01)) == []
