"""What is specific to DRAEM: Perlin noise and the simulated anomalies of eq. 2, the focal loss, the networks at
any size, training that learns to localise, exact resumption, export parity, the anomaly-source folder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from anomalens import create_detector
from anomalens.errors import ConfigError, DataError
from anomalens.models.components.perlin_anomalies import AnomalySynthesizer, load_anomaly_sources, perlin_noise
from anomalens.models.draem import DiscriminativeSubNetwork, ReconstructiveSubNetwork, focal_loss, reconstruct_and_segment
from tests.conftest import TINY_PARAMS, make_records

SMALL = {"image_size": 32, "batch_size": 4, "reconstruction_width": 4, "discriminative_width": 4, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted(tiny_fit):
    return tiny_fit("draem")


def test_perlin_noise_is_smooth_bounded_and_seeded():
    noise = perlin_noise(64, 64, (4, 4), torch.Generator().manual_seed(0))
    again = perlin_noise(64, 64, (4, 4), torch.Generator().manual_seed(0))
    assert noise.shape == (64, 64) and torch.equal(noise, again)
    assert noise.abs().max() <= math.sqrt(2) and noise.std() > 0.1
    # Gradient noise: neighbouring pixels differ by far less than the noise's range.
    assert (noise[1:] - noise[:-1]).abs().max() < 0.2 * (noise.max() - noise.min())
    # Finer lattices change faster.
    fine = perlin_noise(64, 64, (32, 32), torch.Generator().manual_seed(0))
    assert (fine[1:] - fine[:-1]).abs().mean() > 3 * (noise[1:] - noise[:-1]).abs().mean()


def test_simulated_anomalies_follow_eq_2():
    sources = load_anomaly_sources(None, 64)
    images = torch.rand(6, 3, 48, 40)
    out, masks = AnomalySynthesizer(sources, probability=1.0)(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and masks.shape == (6, 1, 48, 40)
    assert set(masks.unique().tolist()) <= {0.0, 1.0} and (masks.flatten(1).sum(1) > 0).all()
    outside = (masks == 0).expand_as(images)
    assert torch.equal(out[outside], images[outside])  # M̄ ⊙ I untouched
    assert (out[~outside] - images[~outside]).abs().mean() > 0.05  # texture blended in where M = 1
    # β = 1 keeps the image under the mask too.
    kept, _ = AnomalySynthesizer(sources, probability=1.0, blend=(1.0, 1.0))(images, torch.Generator().manual_seed(1))
    torch.testing.assert_close(kept, images)
    # Seeded: the same draw twice; and with probability 0.5 some images stay normal with an empty mask.
    again, _ = AnomalySynthesizer(sources, probability=1.0)(images, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    _, half = AnomalySynthesizer(sources, probability=0.5)(torch.rand(16, 3, 32, 32), torch.Generator().manual_seed(2))
    empty = (half.flatten(1).sum(1) == 0).sum().item()
    assert 2 <= empty <= 14


def test_focal_loss_is_the_softmax_formula():
    g = torch.Generator().manual_seed(0)
    logits, masks = torch.randn(2, 2, 5, 5, generator=g), (torch.rand(2, 1, 5, 5, generator=g) > 0.7).float()
    p = torch.softmax(logits, 1)
    p_t = torch.where(masks[:, 0] > 0, p[:, 1], p[:, 0])
    expected = (-(1 - p_t) ** 2 * torch.log(p_t)).mean()
    torch.testing.assert_close(focal_loss(logits, masks, 2.0), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [(64, 64), (50, 70)])
def test_the_networks_keep_any_input_size(size):
    images = torch.rand(2, 3, *size)
    rebuilt, logits = reconstruct_and_segment(ReconstructiveSubNetwork(4), DiscriminativeSubNetwork(4), images)
    assert rebuilt.shape == images.shape and logits.shape == (2, 2, *size)


def test_training_lowers_every_loss(fitted):
    history = fitted.history_
    assert set(history) == {"loss", "l2", "ssim", "focal"}  # no validation by default: the paper's last epoch
    assert len(history["loss"]) == TINY_PARAMS["draem"]["epochs"] and fitted.kept_epoch_ == len(history["loss"]) - 1
    for name in ("loss", "l2", "ssim", "focal"):
        assert history[name][-1] < history[name][0], name


def test_score_is_the_max_of_the_mean_filtered_map_and_the_map_localises(fitted, test_records):
    anomalous = [r for r in test_records if r.label == 1]
    scores, maps = fitted.score(anomalous, progress=False)
    assert maps.min() >= 0 and maps.max() <= 1  # the discriminator's softmax
    pool = fitted.score_pool
    smoothed = torch.nn.functional.avg_pool2d(torch.from_numpy(maps)[:, None], pool, 1, pool // 2)
    np.testing.assert_allclose(scores, smoothed.flatten(1).amax(1).numpy(), rtol=1e-5)
    masks = np.stack([record.mask for record in anomalous])
    # The pasted squares stand out pixel by pixel (a tiny budget: well above chance, not the paper's maps).
    assert roc_auc_score(masks.ravel(), maps.ravel()) >= 0.7
    assert maps[masks].mean() > maps[~masks].mean()


def test_resuming_from_a_checkpoint_gives_the_same_networks(tmp_path):
    records = make_records(8, 0, seed=3, size=32)
    straight = create_detector("draem", **SMALL, epochs=3).fit(records, progress=False)
    path = tmp_path / "draem.ckpt"
    create_detector("draem", **SMALL, epochs=2, checkpoint=str(path)).fit(records, progress=False)
    resumed = create_detector("draem", **SMALL, epochs=3, checkpoint=str(path)).fit(records, progress=False)
    for key, values in straight.history_.items():
        assert resumed.history_[key] == pytest.approx(values, rel=1e-5), key
    for network in ("reconstructive_", "discriminative_"):
        for (name, a), b in zip(getattr(straight, network).state_dict().items(), getattr(resumed, network).state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_validation_uses_the_same_simulated_anomalies_every_epoch():
    class Images:  # what TrainingImages offers the validation loop
        tensor = torch.rand(6, 3, 32, 32)

        def __len__(self):
            return len(self.tensor)

        def take(self, index):
            return self.tensor[torch.as_tensor(index)]

    detector = create_detector("draem", **SMALL, validation_fraction=0.3)
    detector._build_networks()
    detector.synthesizer_ = detector._synthesizer()
    for network in detector._networks().values():
        network.eval()
    with torch.no_grad():
        first = detector._mean_validation_loss(Images())
        torch.rand(5)  # training draws from torch's global generator in between: validation must not care
        assert detector._mean_validation_loss(Images()) == first


def test_an_anomaly_source_folder_replaces_the_builtin_photos(tmp_path):
    folder = tmp_path / "textures"
    folder.mkdir()
    with pytest.raises(DataError, match="no images to take anomaly textures from"):
        load_anomaly_sources(str(folder), 64)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 90, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    sources = load_anomaly_sources(str(folder), 64)
    assert [tuple(s.shape) for s in sources] == [(3, 28, 64)] * 2
    detector = create_detector("draem", **SMALL, epochs=1, anomaly_source=str(folder))
    detector.fit(make_records(6, 0, seed=5, size=32), progress=False)
    assert detector.is_fitted


def test_inconsistent_ranges_fail_at_construction():
    with pytest.raises(ConfigError, match="perlin_scales"):
        create_detector("draem", perlin_scales=[3, 3])
    with pytest.raises(ConfigError, match="blend"):
        create_detector("draem", blend=[0.9, 0.2])
    with pytest.raises(ConfigError, match="score_pool"):
        create_detector("draem", score_pool=20)


@pytest.mark.export  # the export tier: in make test, not make test-fast
def test_export_agrees_with_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from anomalens.export import DEFAULT_TOLERANCE, export_run, verify_export

    records = make_records(3, 3, seed=6, size=48)
    files = []
    for i, record in enumerate(records):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(record.source).save(files[-1])
    detector = create_detector("draem", **{**SMALL, "image_size": 48, "epochs": 1})
    run = detector.fit(make_records(8, 0, seed=1, size=48), progress=False).save(tmp_path / "run")
    out = export_run(run, tmp_path / "export", progress=False)
    for runtime in ("onnxruntime", "openvino"):
        report = verify_export(out, files, runtime=runtime, progress=False)
        assert report["scores_rel"] <= DEFAULT_TOLERANCE and report["maps_rel"] <= DEFAULT_TOLERANCE, report
        # A one-epoch model scores every image about alike, right at its threshold: a label may flip on a
        # rounding difference, never on a score that differs by more than the tolerance.
        for flip in report["flips"]:
            assert flip["torch_score"] == pytest.approx(detector.threshold_, rel=DEFAULT_TOLERANCE), flip
