"""What is specific to SPADE: the K nearest training images, the pixel galleries and the pixel threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalens import ConfigError, create_detector
from anomalens.thresholds import quantile_threshold
from anomalens.models.components.knn import nearest_neighbors
from tests.conftest import IMAGE_SIZE, TINY_PARAMS


@pytest.fixture(scope="module")
def fitted(tiny_fit):
    return tiny_fit("spade")


@pytest.fixture(scope="module")
def fitted_all(train_records):
    """Fitted on every training image (no hold-out), so that training images are in the galleries."""
    return create_detector("spade", **{**TINY_PARAMS["spade"], "top_k": 3}, holdout_fraction=0).fit(train_records, progress=False)


def _global(detector, records):
    from anomalens.data import iterate_batches

    with torch.inference_mode():
        return torch.cat([detector._features(b["image"])[0] for b in iterate_batches(records, IMAGE_SIZE, 8)])


def test_a_duplicate_of_a_training_image_finds_itself_first(fitted_all, train_records):
    queries = _global(fitted_all, train_records[3:6])
    dist, index = nearest_neighbors(queries, fitted_all.global_features_, 3)
    assert index[:, 0].tolist() == [3, 4, 5]
    assert dist[:, 0].max() < 1e-2 * dist[:, 1].min()
    # And the K nearest are the K smallest brute-force distances.
    brute = torch.cdist(queries.double(), fitted_all.global_features_.double()).topk(3, largest=False)
    assert torch.equal(index, brute.indices)


def test_duplicate_training_image_has_a_near_zero_map(fitted_all, train_records, test_records):
    _, maps = fitted_all.score(train_records[:2], progress=False)
    _, other = fitted_all.score(test_records[:2], progress=False)
    assert maps.max() < 0.05 * other.mean()


def test_image_score_is_the_mean_distance_to_the_k_nearest(fitted_all, test_records):
    scores, _ = fitted_all.score(test_records[:4], progress=False)
    brute = torch.cdist(_global(fitted_all, test_records[:4]).double(), fitted_all.global_features_.double())
    np.testing.assert_allclose(scores, brute.topk(3, largest=False).values.mean(1).numpy(), rtol=1e-4)


def test_pixel_map_peaks_on_the_pasted_defect(fitted, test_records):
    anomalous = [r for r in test_records if r.label == 1]
    _, maps = fitted.score(anomalous, progress=False)
    for record, amap in zip(anomalous, maps):
        assert record.mask.flat[amap.argmax()]
        assert amap[record.mask].mean() > np.quantile(amap[~record.mask], 0.99)


def test_top_k_above_the_training_set_uses_all_images(train_records, test_records):
    det = create_detector("spade", **{**TINY_PARAMS["spade"], "top_k": 50}, holdout_fraction=0).fit(train_records[:4], progress=False)
    scores, maps = det.score(test_records[:2], progress=False)
    assert np.isfinite(scores).all() and maps.shape == (2, IMAGE_SIZE, IMAGE_SIZE)


def test_pixel_threshold_comes_from_held_out_normal_maps(fitted, train_records):
    # The image score is a global kNN distance, not the map maximum: the pixel threshold is separate.
    assert type(fitted).score_is_map_max is False
    _, holdout = fitted.normal_scores.holdout_split(list(train_records))
    scores, maps = fitted.score(holdout, progress=False)
    assert fitted.pixel_threshold_ == pytest.approx(quantile_threshold(maps.reshape(len(maps), -1).max(1), 0.99))
    assert fitted.threshold_ == pytest.approx(quantile_threshold(scores, 0.99))
    assert not np.isclose(fitted.threshold_, fitted.pixel_threshold_)


def test_memory_kept_matches_the_stated_formula(fitted_all, train_records):
    channels = fitted_all.extractor_.channels  # out_indices 1, 2, 3, 4
    per_image = sum(c * (IMAGE_SIZE // s) ** 2 for c, s in zip(channels[:3], (4, 8, 16))) + channels[3]
    stored = sum(t.numel() for k, t in fitted_all._state_tensors().items() if k != "grid_sizes")
    assert stored == len(train_records) * per_image


@pytest.mark.parametrize("params, name", [
    ({"top_k": 0}, "top_k"),
    ({"layers": []}, "layers"),
    ({"global_layer": -1}, "global_layer"),
    ({"blur_sigma": -0.5}, "blur_sigma"),
])
def test_out_of_range_parameters_fail_at_construction(params, name):
    with pytest.raises(ConfigError, match=f"spade: parameter {name} must be"):
        create_detector("spade", **params)
