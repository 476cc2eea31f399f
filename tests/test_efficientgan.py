"""EfficientGAN: the seed's layers at 28 px, larger inputs, seed init, the score, training and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from anomalens import ConfigError, create_detector, load_detector
from anomalens.models.components.dcgan import gan_init
from anomalens.models.components.trained import TrainingImages
from anomalens.models.efficientgan import Discriminator, Encoder, Generator, stage_plan
from tests.conftest import make_records

TINY = {"image_size": 28, "batch_size": 8, "epochs": 2, "latent_dim": 8, "n_features": 16, "device": "cpu"}


@pytest.fixture(scope="module")
def records():
    return make_records(12, 0, seed=3, size=28)


@pytest.fixture(scope="module")
def fitted(records):
    return create_detector("efficientgan", **TINY).fit(records, progress=False)


def _network_images(records, size: int) -> torch.Tensor:
    """Grayscale images as the networks see them: (N, 1, size, size) in [-1, 1]."""
    return TrainingImages(records, size, 1).take(np.arange(len(records))) * 2 - 1


def _shapes(module: nn.Module) -> list[tuple]:
    out = []
    for m in module.modules():
        if isinstance(m, nn.Linear):
            out.append(("fc", m.in_features, m.out_features))
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            kind = "deconv" if isinstance(m, nn.ConvTranspose2d) else "conv"
            out.append((kind, m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0]))
    return out


def test_seed_layers_at_28_px():
    # The seed's Generator / Discriminator / Encoder (z_dim 50, grayscale), layer by layer.
    assert _shapes(Generator(28, 50, 1)) == [
        ("fc", 50, 1024), ("fc", 1024, 7 * 7 * 128), ("deconv", 128, 64, 4, 2, 1), ("deconv", 64, 1, 4, 2, 1)]
    assert _shapes(Discriminator(28, 50, 1)) == [
        ("conv", 1, 64, 4, 2, 1), ("conv", 64, 64, 4, 2, 1), ("fc", 50, 512), ("fc", 3648, 1024), ("fc", 1024, 1)]
    assert _shapes(Encoder(28, 50, 1)) == [
        ("conv", 1, 32, 3, 1, 0), ("conv", 32, 64, 3, 2, 1), ("conv", 64, 128, 3, 2, 1), ("fc", 128 * 7 * 7, 50)]
    g, e, d = Generator(28, 50, 1), Encoder(28, 50, 1), Discriminator(28, 50, 1)
    g.eval(), e.eval(), d.eval()
    x = g(torch.randn(2, 50))
    assert x.shape == (2, 1, 28, 28) and x.abs().max() <= 1
    logit, feature = d(x, e(x))
    assert logit.shape == (2,) and feature.shape == (2, 1024)


@pytest.mark.parametrize("side,stages", [(28, 2), (32, 3), (64, 4), (256, 6)])
def test_larger_inputs_add_stride_two_stages(side, stages):
    assert stage_plan(side)[0] == stages
    g, e, d = Generator(side, 8, 3, base=4), Encoder(side, 8, 3, base=4), Discriminator(side, 8, 3, base=4)
    for m in (g, e, d):
        m.eval()
    x = g(torch.randn(2, 8))
    assert x.shape == (2, 3, side, side)
    assert e(x).shape == (2, 8) and d(x, e(x))[1].shape == (2, 1024)


@pytest.mark.parametrize("size", [30, 12, 100, (28, 32)])
def test_unsupported_sizes_are_refused_when_created(size):
    with pytest.raises(ConfigError, match="image"):
        create_detector("efficientgan", **{**TINY, "image_size": size})


def test_seed_init():
    torch.manual_seed(0)
    g = gan_init(Generator(28, 50, 1), bn_weight_mean=0.0)
    bn = torch.cat([m.weight for m in g.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))])
    assert abs(bn.mean().item()) < 0.002 and abs(bn.std().item() - 0.02) < 0.002  # the seed's N(0, 0.02)
    deconv = g.last[0]
    assert abs(deconv.weight.std().item() - 0.02) < 0.002 and not deconv.bias.any()
    assert all(not m.bias.any() for m in g.modules() if isinstance(m, nn.Linear))


def test_score_is_the_seed_formula(fitted, records):
    scores, maps = fitted.score(records[:5], progress=False)
    x = _network_images(records[:5], 28)
    with torch.no_grad():
        z = fitted.encoder_(x)
        x_hat = fitted.generator_(z)
        f_real, f_fake = fitted.discriminator_(x, z)[1], fitted.discriminator_(x_hat, z)[1]
    expected = 0.9 * (x - x_hat).abs().sum((1, 2, 3)) + 0.1 * (f_real - f_fake).abs().sum(1)
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-5)
    np.testing.assert_allclose(maps, ((x - x_hat).abs() / 2).mean(1).numpy(), rtol=1e-5, atol=1e-6)
    one_by_one = np.concatenate([fitted.score([r], progress=False)[0] for r in records[:5]])
    np.testing.assert_allclose(one_by_one, scores, rtol=1e-4)


def test_history_and_last_epoch(fitted):
    assert set(fitted.history_) == {"d", "g", "e"}
    assert all(len(v) == TINY["epochs"] for v in fitted.history_.values())
    assert fitted.kept_epoch_ == TINY["epochs"] - 1
    # BCE of each network's objective starts near log 2 (D: two terms).
    assert 1.0 < fitted.history_["d"][0] < 1.8 and 0.4 < fitted.history_["g"][0] < 1.0


def test_training_changes_every_network(records):
    det = create_detector("efficientgan", **TINY)
    torch.manual_seed(0)  # fit() seeds the same way before building, so this is the initial state
    det._build_networks()
    initial = {name: [p.detach().clone() for p in m.parameters()] for name, m in det._networks().items()}
    det.fit(records, progress=False)
    for name, m in det._networks().items():
        assert any(not torch.equal(a, b) for a, b in zip(initial[name], m.parameters())), name


def test_validation_and_resume(records, tmp_path):
    det = create_detector("efficientgan", **{**TINY, "epochs": 3}, validation_fraction=0.25).fit(records, progress=False)
    assert len(det.history_["val_loss"]) == 3 and det.kept_epoch_ == int(np.argmin(det.history_["val_loss"]))
    straight = create_detector("efficientgan", **{**TINY, "epochs": 3}).fit(records, progress=False)
    ck = tmp_path / "ck.pt"
    create_detector("efficientgan", **{**TINY, "epochs": 1}, checkpoint=str(ck)).fit(records, progress=False)
    resumed = create_detector("efficientgan", **{**TINY, "epochs": 3}, checkpoint=str(ck)).fit(records, progress=False)
    np.testing.assert_allclose(resumed.score(records, progress=False)[0], straight.score(records, progress=False)[0], rtol=1e-5)


def test_rgb_64_save_load(tmp_path):
    recs = make_records(10, 2, seed=4, size=64)
    det = create_detector("efficientgan", **{**TINY, "image_size": 64, "channels": 3}).fit(recs[:10], progress=False)
    det.save(tmp_path / "run")
    loaded = load_detector(tmp_path / "run")
    before, after = det.predict(recs, progress=False), loaded.predict(recs, progress=False)
    np.testing.assert_allclose(after.scores, before.scores, rtol=1e-5)
    assert after.maps.shape == (12, 64, 64)
