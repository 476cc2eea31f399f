"""The detector contract, checked once for every registered detector."""

from __future__ import annotations

import numpy as np
import pytest

import anomalens
from anomalens import ConfigError, create_detector, list_detectors, load_detector
from tests.conftest import IMAGE_SIZE, TINY_PARAMS

NAMES = list_detectors()


def test_every_detector_has_tiny_test_settings():
    assert set(NAMES) <= set(TINY_PARAMS), "add tiny settings for new detectors to tests/conftest.py"


@pytest.fixture(scope="module", params=NAMES)
def fitted(request, train_records):
    detector = create_detector(request.param, **TINY_PARAMS[request.param])
    assert detector.fit(train_records, progress=False) is detector
    return detector


def test_unknown_parameter_is_refused():
    with pytest.raises(ConfigError, match="unknown parameter"):
        create_detector(NAMES[0], not_a_param=1)


def test_unknown_detector_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="padim"):
        create_detector("nope")


def test_scoring_before_fit_fails_clearly(test_records):
    with pytest.raises(RuntimeError, match="fit"):
        create_detector(NAMES[0], **TINY_PARAMS[NAMES[0]]).predict(test_records)


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


def test_same_seed_same_scores(fitted, train_records, test_records):
    again = create_detector(fitted.name, **TINY_PARAMS[fitted.name]).fit(train_records, progress=False)
    np.testing.assert_allclose(again.score(test_records, progress=False)[0], fitted.score(test_records, progress=False)[0], rtol=1e-5)


def test_save_load_round_trip(fitted, test_records, tmp_path):
    fitted.save(tmp_path / "run")
    loaded = load_detector(tmp_path / "run")
    assert type(loaded) is type(fitted) and loaded.params == fitted.params
    assert loaded.threshold_ == fitted.threshold_
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
    if fitted.name not in RECONSTRUCTING:
        assert not hasattr(fitted, "reconstruct")
        return
    inputs, outputs = fitted.reconstruct(test_records[:3])
    assert inputs.shape == outputs.shape and inputs.shape[0] == 3 and inputs.shape[-2:] == fitted.input_size
    assert inputs.min() >= 0 and inputs.max() <= 1 and outputs.min() >= 0 and outputs.max() <= 1
    assert not np.allclose(inputs, outputs, atol=1e-3)  # a real reconstruction, not the input passed through
    if fitted.name in ("anogan", "efficientgan", "ganomaly"):  # their map is |x - x̂|, channel mean
        maps = fitted.predict(test_records[:3], progress=False).maps
        np.testing.assert_allclose(np.abs(inputs - outputs).mean(1), maps, atol=1e-5)
