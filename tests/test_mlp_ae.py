"""The seed's fully-connected autoencoders (architectures A and B)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from anomalens import ConfigError, create_detector
from anomalens.data import ImageRecord
from anomalens.models.mlp_ae import build_mlp_autoencoder


def _linear_shapes(net: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)]


def test_architecture_a_is_the_seeds_network():
    net = build_mlp_autoencoder("A", 784, 64)
    assert _linear_shapes(net) == [(784, 256), (256, 128), (128, 64), (64, 128), (128, 256), (256, 784)]
    assert isinstance(net[1][-1], nn.Tanh)
    assert isinstance(net[0][-1], nn.Linear)  # linear code
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 4


def test_architecture_b_is_the_seeds_network():
    net = build_mlp_autoencoder("B", 784, 16)
    widths = [784, 512, 256, 128, 64, 32, 16]
    expected = list(zip(widths[:-1], widths[1:])) + list(zip(widths[::-1][:-1], widths[::-1][1:]))
    assert _linear_shapes(net) == expected
    assert all(isinstance(m, nn.ReLU) for m in (net[0][-1], net[1][-1]))  # ReLU after the code and the output
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 12


def test_per_architecture_defaults_and_overrides():
    a, b = create_detector("mlp_ae"), create_detector("mlp_ae", architecture="B")
    assert a.image_size == 28 and a.n_inputs == 784
    assert [a.setting(k) for k in ("latent_dim", "epochs", "lr", "batch_size", "optimizer")] == [64, 10, 3e-4, 16, "adam"]
    assert [b.setting(k) for k in ("latent_dim", "epochs", "lr", "batch_size", "optimizer")] == [16, 15, 1e-2, 32, "sgd"]
    assert a.weight_decay == b.weight_decay == 1e-5
    assert create_detector("mlp_ae", epochs=3, lr=0.1).setting("epochs") == 3
    with pytest.raises(ConfigError, match="architecture"):
        create_detector("mlp_ae", architecture="C")
    with pytest.raises(ConfigError, match="epochs"):
        create_detector("mlp_ae", epochs=0)


def _digits(n: int, seed: int, noisy: bool = False) -> list[ImageRecord]:
    """A vertical bar ("digit 1") with jitter; ``noisy`` adds the seed's +randint(100, 200) corruption."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        img = np.zeros((28, 28), np.int64)
        col = 13 + rng.integers(-2, 3)
        img[4:24, col : col + 3] = rng.integers(180, 256)
        if noisy:
            img = np.minimum(255, img + rng.integers(100, 201, img.shape))
        records.append(ImageRecord(img.astype(np.uint8), int(noisy), None, f"{int(noisy)}/{i}"))
    return records


@pytest.fixture(scope="module")
def bars():
    return _digits(60, 0), _digits(6, 1) + _digits(6, 2, noisy=True)


@pytest.mark.parametrize("architecture", ["A", "B"])
def test_scores_and_maps_follow_the_seed(architecture, bars):
    train, test = bars
    det = create_detector("mlp_ae", architecture=architecture, epochs=2, device="cpu").fit(train, progress=False)
    assert set(det.history_) == {"loss", "val_loss"} and len(det.history_["val_loss"]) == 2
    scores, maps = det.score(test, progress=False)
    assert maps.shape == (12, 28, 28) and maps.dtype == np.float32
    inputs, recons = det.reconstruct(test)
    assert inputs.shape == recons.shape == (12, 1, 28, 28)
    inputs, recons = inputs[:, 0], recons[:, 0]
    assert recons.min() >= 0 and recons.max() <= 1  # both in the [0, 1] scale (A: Tanh output mapped back)
    if architecture == "A":  # Σ |x − x̂|, the difference image of the seed
        np.testing.assert_allclose(maps, np.abs(inputs - recons), atol=1e-6)
        np.testing.assert_allclose(scores, maps.reshape(12, -1).sum(1), rtol=1e-5)
    else:  # per-image MSE
        np.testing.assert_allclose(maps, (inputs - recons) ** 2, atol=1e-6)
        np.testing.assert_allclose(scores, maps.reshape(12, -1).mean(1), rtol=1e-5)
    if architecture == "B":
        # The noise protocol: corrupted images score far above normal ones (B's ReLU output starts near 0;
        # A's Tanh output starts at mid-grey, so A needs real training before this holds).
        labels = np.array([r.label for r in test])
        assert scores[labels == 1].min() > scores[labels == 0].max()


def test_image_score_option(bars):
    det = create_detector("mlp_ae", epochs=1, image_score="max", device="cpu").fit(bars[0], progress=False)
    scores, maps = det.score(bars[1], progress=False)
    np.testing.assert_allclose(scores, maps.reshape(len(maps), -1).max(1))
    with pytest.raises(ConfigError, match="image_score"):
        create_detector("mlp_ae", image_score="median")


def test_image_size_sets_the_input_layer(bars):
    det = create_detector("mlp_ae", image_size=16, epochs=1, device="cpu").fit(bars[0], progress=False)
    assert _linear_shapes(det.net_)[0] == (256, 256)
    assert det.score(bars[1], progress=False)[1].shape == (12, 16, 16)


def test_last_epoch_is_kept_by_default_best_on_request(bars, tmp_path):
    train = bars[0]
    for restore_best in (False, True):
        ckpt = tmp_path / f"{restore_best}.ckpt"
        det = create_detector(
            "mlp_ae", epochs=4, lr=3e-2, restore_best=restore_best, checkpoint=str(ckpt), device="cpu"
        ).fit(train, progress=False)
        saved = torch.load(ckpt, weights_only=True)
        expected = saved["best_state"]["net"] if restore_best else saved["state"]["modules"]["net"]
        for key, value in det.net_.state_dict().items():
            torch.testing.assert_close(value, expected[key])
        assert det.kept_epoch_ == (saved["best_epoch"] if restore_best else 3)
        # Resuming a finished run changes nothing.
        again = create_detector(
            "mlp_ae", epochs=4, lr=3e-2, restore_best=restore_best, checkpoint=str(ckpt), device="cpu"
        ).fit(train, progress=False)
        for key, value in again.net_.state_dict().items():
            torch.testing.assert_close(value, expected[key])


def test_save_and_load_keep_the_architecture(bars, tmp_path):
    from anomalens import load_detector

    det = create_detector("mlp_ae", architecture="B", epochs=1, device="cpu").fit(bars[0], progress=False)
    det.save(tmp_path / "run")
    loaded = load_detector(tmp_path / "run")
    assert loaded.architecture == "B" and loaded.kept_epoch_ == det.kept_epoch_
    np.testing.assert_allclose(loaded.score(bars[1], progress=False)[0], det.score(bars[1], progress=False)[0], rtol=1e-6)
