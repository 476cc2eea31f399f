"""Threshold rules: normal-quantile, F1-optimal, and the seed's minimum-area + threshold search."""

from __future__ import annotations

import numpy as np
import pytest

from anomalens import create_detector, load_detector
from anomalens.thresholds import (
    area_threshold_search,
    f1_threshold,
    largest_defect_areas,
    quantile_threshold,
    scaled_min_areas,
)
from tests.conftest import TINY_PARAMS


def test_quantile_threshold_passes_that_share_of_normals():
    scores = np.arange(100, dtype=float)
    t = quantile_threshold(scores, 0.95)
    assert np.mean(scores > t) <= 0.05 and t in scores


def test_f1_threshold_needs_both_classes():
    assert f1_threshold(np.array([0, 0, 0]), np.array([0.1, 0.2, 0.3])) is None
    t = f1_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert 0.2 <= t < 0.8


def test_largest_area_optionally_ignores_regions_touching_the_border():
    maps = np.zeros((1, 20, 20), np.float32)
    maps[0, 0:5, 0:5] = 1.0  # 25 px at the border: cleared with clear_border, as in the 2021 reference
    maps[0, 8:11, 8:12] = 1.0  # 12 px inside
    maps[0, 15:17, 15:17] = 1.0  # 4 px, diagonal neighbours are not connected to anything
    assert largest_defect_areas(maps, 0.5).tolist() == [25]
    assert largest_defect_areas(maps, 0.5, clear_border=True).tolist() == [12]


def test_min_area_grid_scales_with_image_size():
    assert scaled_min_areas((256, 256))[[0, -1]].tolist() == [5, 1000]
    small = scaled_min_areas((64, 64))
    assert small[0] >= 1 and small[-1] == round(1000 / 16)


def _blob_maps(n: int, blob: int, value: float, rng) -> np.ndarray:
    maps = rng.uniform(0, 0.3, (n, 64, 64)).astype(np.float32)
    for m in maps:
        r, c = rng.integers(10, 40, 2)
        m[r : r + blob, c : c + blob] = value
    return maps


def test_area_search_separates_small_noise_from_large_defects():
    rng = np.random.default_rng(0)
    normals = _blob_maps(10, 3, 0.9, rng)  # 9-px bright specks on normal images
    labelled = np.concatenate([_blob_maps(6, 3, 0.9, rng), _blob_maps(6, 10, 0.9, rng)])  # 100-px defects
    labels = np.array([0] * 6 + [1] * 6)
    found = area_threshold_search(normals, labelled, labels)
    assert found["score"] == 1.0
    assert 9 < found["min_area"] <= 100
    predicted = largest_defect_areas(labelled, found["threshold"]) >= found["min_area"]
    assert predicted.tolist() == labels.astype(bool).tolist()


def test_area_search_without_anomalies_says_so_and_passes_the_normals():
    rng = np.random.default_rng(1)
    normals = _blob_maps(8, 3, 0.9, rng)
    fresh = _blob_maps(8, 3, 0.9, rng)
    found = area_threshold_search(normals, fresh, np.zeros(8, int))
    assert "only normal" in found["note"] and found["score"] == 1.0


def test_detector_area_rule_round_trip(train_records, test_records, tmp_path):
    det = create_detector("padim", **TINY_PARAMS["padim"]).fit(train_records, progress=False)
    from tests.conftest import make_records

    held_out_normals = make_records(8, 0, seed=11)  # as in the workflow: normals the fit did not see
    info = det.calibrate(test_records, method="area", normal_records=held_out_normals, progress=False)
    assert det.decision_.min_area == info["min_area"] and det.pixel_threshold_ == info["pixel_threshold"]
    result = det.predict(test_records, progress=False)
    expected = largest_defect_areas(result.maps, det.pixel_threshold_) >= det.decision_.min_area
    np.testing.assert_array_equal(result.labels, expected.astype(int))
    labels = np.array([r.label for r in test_records])
    assert ((result.labels == 1) & (labels == 1)).sum() >= 4  # the square defects are large regions
    det.save(tmp_path / "run")
    loaded = load_detector(tmp_path / "run")
    assert loaded.decision_.min_area == det.decision_.min_area
    np.testing.assert_array_equal(loaded.predict(test_records, progress=False).labels, result.labels)
    det.calibrate(test_records, method="f1", progress=False)
    assert det.decision_.min_area is None


def test_area_rule_needs_maps():
    from anomalens import DecisionRule

    det = create_detector("mahalanobis")  # an image-level detector
    det.decision_ = DecisionRule(image_threshold=1.0, source="quantile", description="set by the test")
    with pytest.raises(Exception, match="no anomaly maps"):
        det.calibrate([], method="area")


def test_area_calibration_never_uses_normals_the_model_was_fitted_on(train_records, test_records, tmp_path):
    """Regression (issue 15, item 2): `calibrate --method area` on PaDiM flagged every image — the
    'held-out' normals it validated on were in PaDiM's final fit, so their maps were near zero."""
    from anomalens.data import AnomalyDataset
    from anomalens.workflow import calibrate_run, fit_run

    dataset = AnomalyDataset("tiny", train=list(train_records), test=list(test_records))
    padim = fit_run("padim", dataset, tmp_path / "padim", TINY_PARAMS["padim"], progress=False)
    assert padim.unseen_normals(dataset.train) == []  # its final model used the hold-out too
    calibrate_run(tmp_path / "padim", dataset, method="area", progress=False)
    result = load_detector(tmp_path / "padim").predict(test_records, progress=False)
    labels = np.array([r.label for r in test_records])
    assert result.labels[labels == 0].mean() < 0.5  # normals pass
    assert result.labels[labels == 1].mean() > 0.5  # defects are found

    stpm = create_detector("stpm", **TINY_PARAMS["stpm"])
    assert [r.name for r in stpm.unseen_normals(train_records)] == [r.name for r in stpm.normal_scores.holdout_split(train_records)[1]]
