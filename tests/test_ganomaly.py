"""GANomaly and the shared DCGAN blocks: reference architecture, losses, D re-init, score, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalens import ConfigError, create_detector, load_detector
from anomalens.models.components.dcgan import DCGANDecoder, DCGANEncoder, gan_init
from anomalens.models.components.trained import TrainingImages
from anomalens.models.ganomaly import GANomalyGenerator
from tests.conftest import make_records

TINY = {"image_size": 32, "batch_size": 8, "epochs": 2, "latent_dim": 8, "n_features": 8, "device": "cpu"}


@pytest.fixture(scope="module")
def records():
    return make_records(12, 0, seed=3, size=32)


@pytest.fixture(scope="module")
def fitted(records):
    return create_detector("ganomaly", **TINY).fit(records, progress=False)


def _network_images(records, size: int) -> torch.Tensor:
    """Grayscale images as the networks see them: (N, 1, size, size) in [-1, 1]."""
    return TrainingImages(records, size, 1).take(np.arange(len(records))) * 2 - 1


def _convs(module):
    return [m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]


def test_dcgan_blocks_match_the_reference_pyramid():
    # samet-akcay/ganomaly, isize 32, ngf 64, nz 100: 1→64→128→256 then a 4×4 conv to nz; mirrored decoder.
    enc = DCGANEncoder(32, 100, 1, 64)
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in _convs(enc)] == [(1, 64, 2), (64, 128, 2), (128, 256, 2), (256, 100, 1)]
    dec = DCGANDecoder(32, 100, 1, 64)
    assert [(c.in_channels, c.out_channels) for c in _convs(dec)] == [(100, 256), (256, 128), (128, 64), (64, 1)]
    x = torch.randn(2, 3, 64, 64)
    enc64 = DCGANEncoder(64, 10, 3, 8)
    out, feats = enc64.forward_with_features(x)
    assert out.shape == (2, 10) and feats.shape == (2, 64, 4, 4)
    assert DCGANDecoder(64, 10, 3, 8)(out).shape == (2, 3, 64, 64)
    # The first encoder conv has no BatchNorm (DCGAN).
    assert not isinstance(enc.features[1], torch.nn.BatchNorm2d)


def test_init_is_dcgan():
    torch.manual_seed(0)
    g = gan_init(GANomalyGenerator(64, 100, 3, 64, 0))
    weights = torch.cat([c.weight.flatten() for c in _convs(g)])
    assert abs(weights.std().item() - 0.02) < 0.001 and abs(weights.mean().item()) < 0.001
    bn = torch.cat([m.weight for m in g.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert abs(bn.mean().item() - 1.0) < 0.005 and abs(bn.std().item() - 0.02) < 0.005


@pytest.mark.parametrize("size", [28, 48, 16, (32, 64)])
def test_size_must_be_a_square_power_of_two_from_32(size):
    with pytest.raises(ConfigError, match="image"):
        create_detector("ganomaly", **{**TINY, "image_size": size})


@pytest.mark.parametrize("bad", [{"channels": 2}, {"score_type": "mse"}, {"epochs": 0}])
def test_bad_parameters_are_refused_when_created(bad):
    with pytest.raises(ConfigError):
        create_detector("ganomaly", **{**TINY, **bad})


def test_score_is_the_latent_error_and_map_the_residual(fitted, records):
    scores, maps = fitted.score(records[:5], progress=False)
    x = _network_images(records[:5], 32)
    with torch.no_grad():
        x_hat, z, z_hat = fitted.generator_(x)
    np.testing.assert_allclose(scores, (z - z_hat).pow(2).mean(1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(maps, ((x - x_hat).abs() / 2).mean(1).numpy(), rtol=1e-5, atol=1e-6)
    assert maps.shape == (5, 32, 32) and maps.dtype == np.float32
    # Eval mode: an image's score does not depend on the batch it is scored in.
    one_by_one = np.concatenate([fitted.score([r], progress=False)[0] for r in records[:5]])
    np.testing.assert_allclose(one_by_one, scores, rtol=1e-4)


def test_reconstruction_score_is_the_map_mean(records):
    det = create_detector("ganomaly", **TINY, score_type="reconstruction").fit(records, progress=False)
    scores, maps = det.score(records[:4], progress=False)
    np.testing.assert_allclose(scores, maps.reshape(4, -1).mean(1), rtol=1e-5)


def test_history_has_every_loss_and_the_last_epoch_is_kept(fitted):
    assert set(fitted.history_) == {"d", "g", "g_adv", "g_con", "g_enc"}
    assert all(len(v) == TINY["epochs"] for v in fitted.history_.values())
    assert fitted.kept_epoch_ == TINY["epochs"] - 1
    g = fitted.history_
    # The generator loss is the weighted sum of its parts (per step, hence per epoch mean).
    np.testing.assert_allclose(g["g"], np.array(g["g_adv"]) + 50 * np.array(g["g_con"]) + np.array(g["g_enc"]), rtol=1e-4)


def test_discriminator_is_reinitialised_below_the_threshold(records):
    # A threshold no loss can stay under: D is re-initialised after every step.
    det = create_detector("ganomaly", **TINY, d_reinit_below=100.0).fit(records, progress=False)
    steps_per_epoch = (len(records) - 1) // TINY["batch_size"] + 1  # 11 fit images (1 held out), batch 8
    assert det.d_reinits_ == TINY["epochs"] * steps_per_epoch
    assert create_detector("ganomaly", **TINY).fit(records, progress=False).d_reinits_ == 0


def test_validation_keeps_the_best_epoch(records):
    det = create_detector("ganomaly", **{**TINY, "epochs": 3}, validation_fraction=0.25).fit(records, progress=False)
    val = det.history_["val_loss"]
    assert len(val) == 3 and det.kept_epoch_ == int(np.argmin(val))


def test_resume_from_checkpoint_gives_the_same_model(records, tmp_path):
    straight = create_detector("ganomaly", **{**TINY, "epochs": 3}).fit(records, progress=False)
    ck = tmp_path / "ck.pt"
    create_detector("ganomaly", **{**TINY, "epochs": 2}, checkpoint=str(ck)).fit(records, progress=False)
    resumed = create_detector("ganomaly", **{**TINY, "epochs": 3}, checkpoint=str(ck)).fit(records, progress=False)
    np.testing.assert_allclose(resumed.score(records, progress=False)[0], straight.score(records, progress=False)[0], rtol=1e-5)
    assert resumed.history_ == straight.history_


def test_rgb_save_load(tmp_path):
    recs = make_records(10, 2, seed=4)  # 64 px, resized to 32
    det = create_detector("ganomaly", **TINY, channels=3).fit(recs[:10], progress=False)
    det.save(tmp_path / "run")
    loaded = load_detector(tmp_path / "run")
    np.testing.assert_allclose(loaded.score(recs, progress=False)[0], det.score(recs, progress=False)[0], rtol=1e-5)
    assert loaded.d_reinits_ == det.d_reinits_ and loaded.kept_epoch_ == det.kept_epoch_
