"""What is specific to Mahalanobis AD: Ledoit-Wolf as scikit-learn, distances as numpy, the 9 levels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from anomalens import ConfigError, create_detector
from anomalens.backbones import PooledFeatureExtractor
from anomalens.models.components.gaussian import inverse_sqrt, ledoit_wolf, mahalanobis
from tests.conftest import TINY_PARAMS


@pytest.mark.parametrize("n, p", [(50, 10), (12, 40), (300, 3), (6, 1), (25, 25)])
def test_ledoit_wolf_matches_scikit_learn(n, p):
    rng = np.random.default_rng(n * 100 + p)
    x = rng.normal(size=(n, p)) @ rng.normal(size=(p, p)) + rng.normal(size=p) * 5
    reference = LedoitWolf().fit(x)
    mean, cov, shrinkage = ledoit_wolf(torch.from_numpy(x))
    assert shrinkage == pytest.approx(reference.shrinkage_, abs=1e-6)
    np.testing.assert_allclose(mean.numpy(), reference.location_, atol=1e-6)
    np.testing.assert_allclose(cov.numpy(), reference.covariance_, atol=1e-6)


def test_whitener_gives_the_precision_even_for_a_singular_covariance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    cov = a @ a.T + np.eye(5)
    w = inverse_sqrt(torch.from_numpy(cov)).numpy()
    np.testing.assert_allclose(w.T @ w, np.linalg.inv(cov), rtol=1e-8, atol=1e-10)
    singular = np.diag([2.0, 1.0, 0.0])  # e.g. a dead channel without shrinkage: pseudo-inverse
    w = inverse_sqrt(torch.from_numpy(singular)).numpy()
    np.testing.assert_allclose(w.T @ w, np.diag([0.5, 1.0, 0.0]), atol=1e-12)


def test_scores_are_the_sum_of_level_distances_computed_directly(train_records, test_records):
    # Every level but the 1280-wide head: the reference's pseudo-inverse of a 1280² covariance took most of the
    # test's time; the 320-wide level keeps the case of more features than images (20).
    detector = create_detector("mahalanobis", **TINY_PARAMS["mahalanobis"], holdout_fraction=0, levels=list(range(8)))
    detector.fit(train_records, progress=False)
    with torch.inference_mode():
        train = [torch.cat(x).numpy() for x in zip(*detector._pooled(train_records, False, ""))]
        test = [torch.cat(x).numpy() for x in zip(*detector._pooled(test_records, False, ""))]
    expected = np.zeros(len(test_records))
    for f_train, f_test in zip(train, test, strict=True):
        lw = LedoitWolf().fit(f_train)
        diff = f_test - lw.location_
        expected += np.sqrt(np.einsum("bi,ij,bj->b", diff, np.linalg.pinv(lw.covariance_, hermitian=True), diff))
    scores, maps = detector.score(test_records, progress=False)
    assert maps is None
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_shifted_features_score_higher():
    rng = np.random.default_rng(1)
    mixing = rng.normal(size=(20, 20))
    normal = torch.from_numpy(rng.normal(size=(200, 20)) @ mixing)
    mean, cov, _ = ledoit_wolf(normal[:150])
    w = inverse_sqrt(cov)
    held_out = mahalanobis(normal[150:], mean, w)
    shifted = normal[150:].clone()
    shifted[:, :3] += 3 * normal[:150, :3].std(0)  # 3σ along three features
    assert (mahalanobis(shifted, mean, w) > held_out).float().mean() > 0.9
    assert mahalanobis(shifted, mean, w).median() > 2 * held_out.median()


def test_all_levels_of_efficientnet_and_resnet():
    lite = PooledFeatureExtractor("efficientnet_lite0")
    resnet = PooledFeatureExtractor("resnet18", weights="random")
    with torch.inference_mode():
        x = torch.rand(2, 3, 64, 64)
        # stem, the 7 stages, the head conv
        assert [tuple(f.shape) for f in lite(x)] == [(2, c) for c in (32, 16, 24, 40, 80, 112, 192, 320, 1280)]
        # stem, layer1..layer4
        assert [tuple(f.shape) for f in resnet(x)] == [(2, c) for c in (64, 64, 128, 256, 512)]


def test_levels_parameter_selects_and_checks(train_records):
    params = {**TINY_PARAMS["mahalanobis"], "holdout_fraction": 0}
    detector = create_detector("mahalanobis", **params, levels=[0, 8]).fit(train_records[:6], progress=False)
    assert [len(m) for m in detector.means_] == [32, 1280]
    # The number of levels is the backbone's: an index past it is refused when fit starts ...
    with pytest.raises(ConfigError, match=r"parameter levels must be indices in 0\.\.8 .*got \[9\]"):
        create_detector("mahalanobis", **params, levels=[9]).fit(train_records[:6], progress=False)
    # ... what is wrong whatever the backbone, at construction.
    for levels in ([], [0.5], "all"):
        with pytest.raises(ConfigError, match="mahalanobis: parameter levels must be a list of integers or null"):
            create_detector("mahalanobis", levels=levels)
