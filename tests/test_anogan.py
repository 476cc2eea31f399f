"""AnoGAN: DCGAN training and the batched latent search with frozen networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalens import ConfigError, create_detector, load_detector
from anomalens.models.components.trained import TrainingImages
from tests.conftest import make_records

TINY = {
    "image_size": 32, "batch_size": 8, "epochs": 2, "latent_dim": 8, "n_features": 8, "device": "cpu",
    "search_steps": 12, "search_lr": [0.05, 0.02, 0.01], "search_milestones": [6, 9],
}


@pytest.fixture(scope="module")
def records():
    return make_records(12, 0, seed=3, size=32)


@pytest.fixture(scope="module")
def fitted(records):
    return create_detector("anogan", **TINY).fit(records, progress=False)


def _network_images(records, size: int) -> torch.Tensor:
    """Grayscale images as the networks see them: (N, 1, size, size) in [-1, 1]."""
    return TrainingImages(records, size, 1).take(np.arange(len(records))) * 2 - 1


def test_paper_defaults():
    det = create_detector("anogan")
    assert det.search_steps == 500 and det.feature_weight == 0.1 and det.image_size == 64
    assert det.search_lr == (0.01, 0.001, 0.0005) and det.search_milestones == (200, 300)
    assert det.lr == 2e-4 and det.betas == (0.5, 0.999)


@pytest.mark.parametrize(
    "bad",
    [{"image_size": 28}, {"image_size": (32, 64)}, {"channels": 4}, {"search_steps": 0},
     {"search_lr": [0.01, 0.001]}, {"search_milestones": [9, 6]}, {"feature_weight": 1.5}],
)
def test_bad_parameters_are_refused_when_created(bad):
    with pytest.raises(ConfigError):
        create_detector("anogan", **{**TINY, **bad})


def test_score_is_the_mapping_loss_at_the_found_z(fitted, records):
    x = _network_images(records[:4], 32)
    scores, fake, z = fitted.search(x)
    with torch.no_grad():
        fake_again = fitted.generator_(z)
        f = fitted.discriminator_.features
        expected = 0.9 * (x - fake_again).abs().sum((1, 2, 3)) + 0.1 * (f(x) - f(fake_again)).abs().sum((1, 2, 3))
    np.testing.assert_allclose(scores.numpy(), expected.numpy(), rtol=1e-5)
    np.testing.assert_allclose(fitted.score(records[:4], progress=False)[0], scores.numpy(), rtol=1e-5)
    # The search improves on the starting point.
    start = fitted.z_start_.expand(4, -1)
    with torch.no_grad():
        start_loss, _ = fitted.mapping_loss(x, start)
    assert (scores < start_loss).all()


def test_batched_search_equals_one_image_at_a_time(fitted, records):
    batched, maps = fitted.score(records[:5], progress=False)
    single = np.concatenate([fitted.score([r], progress=False)[0] for r in records[:5]])
    np.testing.assert_allclose(single, batched, rtol=1e-4)
    assert maps.shape == (5, 32, 32) and maps.dtype == np.float32


def test_networks_stay_frozen_and_trainable_afterwards(fitted, records):
    before = {k: v.clone() for k, v in fitted._state_tensors().items()}
    with torch.inference_mode():  # a caller in inference mode still gets a search
        fitted.score(records[:3], progress=False)
    after = fitted._state_tensors()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for m in fitted._networks().values() for p in m.parameters())


def test_history_and_rgb_save_load(fitted, tmp_path):
    assert set(fitted.history_) == {"d", "g"} and len(fitted.history_["d"]) == TINY["epochs"]
    recs = make_records(10, 2, seed=4)  # 64 px, resized to 32
    det = create_detector("anogan", **TINY, channels=3).fit(recs[:10], progress=False)
    det.save(tmp_path / "run")
    loaded = load_detector(tmp_path / "run")
    np.testing.assert_allclose(loaded.score(recs, progress=False)[0], det.score(recs, progress=False)[0], rtol=1e-5)


def test_resume_from_checkpoint(records, tmp_path):
    straight = create_detector("anogan", **{**TINY, "epochs": 3}).fit(records, progress=False)
    ck = tmp_path / "ck.pt"
    create_detector("anogan", **{**TINY, "epochs": 1}, checkpoint=str(ck)).fit(records, progress=False)
    resumed = create_detector("anogan", **{**TINY, "epochs": 3}, checkpoint=str(ck)).fit(records, progress=False)
    assert resumed.history_ == straight.history_
    np.testing.assert_allclose(resumed.score(records[:3], progress=False)[0], straight.score(records[:3], progress=False)[0], rtol=1e-5)
