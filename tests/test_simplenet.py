"""What is specific to SimpleNet and the parts it shares with GLASS (components.feature_discrimination): the
local features and their standardisation, the truncated L1 loss, features computed once per fit, the score of
Sec. 3.5, training that separates and localises, exact resumption, export parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anomalens import create_detector
from anomalens.errors import ConfigError
from anomalens.models.components.feature_discrimination import embedding_dims, positions, truncated_l1_loss
from tests.conftest import TINY_PARAMS, make_records
from tests.export_parity import assert_export_parity

SMALL = {"image_size": 32, "batch_size": 4, "discriminator_hidden": 32, "device": "cpu"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted(tiny_fit):
    return tiny_fit("simplenet")


def test_embedding_dims_only_ever_reduce():
    assert embedding_dims([40, 112], 1536, 1536) == [40, 112]  # EfficientNet-Lite0: kept as they are
    assert embedding_dims([512, 1024], 1536, 1536) == [512, 1024]  # WideResNet-50 in the papers' 1536
    assert embedding_dims([512, 1024], 1536, 1024) == [512, 512]  # over the target: each level ≤ 1024 / 2
    assert embedding_dims([512, 1024], 256, 1536) == [256, 256]


def test_truncated_l1_loss_is_eq_4():
    normal, anomalous = torch.tensor([0.9, 0.2, -1.0]), torch.tensor([-0.9, 0.1, 2.0])
    expected = np.mean([0.0, 0.3, 1.5]) + np.mean([0.0, 0.6, 2.5])
    assert truncated_l1_loss(normal, anomalous, 0.5, 0.5).item() == pytest.approx(expected)
    # Past both margins: no loss, no gradient.
    normal, anomalous = torch.tensor([0.7], requires_grad=True), torch.tensor([-0.8], requires_grad=True)
    loss = truncated_l1_loss(normal, anomalous, 0.5, 0.5)
    loss.backward()
    assert loss.item() == 0 and normal.grad.item() == 0 and anomalous.grad.item() == 0


def test_features_are_standardised_on_the_training_images_and_computed_once(train_records, monkeypatch):
    detector = create_detector("simplenet", **SMALL, epochs=3)
    calls = []
    original = type(detector)._build_networks

    def counting_build(self):
        original(self)
        raw = self.local_.raw
        self.local_.raw = lambda images: (calls.append(len(images)), raw(images))[1]

    monkeypatch.setattr(type(detector), "_build_networks", counting_build)
    records = train_records[:10]
    detector.params["holdout_fraction"] = 0.0  # every record trains: the count below is exact
    detector.fit(records, progress=False)
    # Three epochs: one backbone pass per image; then one more each, scoring them for the threshold.
    assert sum(calls) == 2 * len(records)
    from anomalens.data import iterate_batches

    images = torch.cat([b["image"] for b in iterate_batches(records, (32, 32), 10)])
    with torch.no_grad():
        rows = positions(detector.local_(images))
    np.testing.assert_allclose(rows.mean(0).numpy(), 0, atol=1e-3)
    np.testing.assert_allclose(rows.std(0, unbiased=False).numpy(), 1, atol=1e-3)


def test_training_lowers_the_loss_and_the_score_is_the_max_of_minus_d(fitted, test_records):
    history = fitted.history_
    assert set(history) == {"loss"} and len(history["loss"]) == TINY_PARAMS["simplenet"]["epochs"]
    assert history["loss"][-1] < history["loss"][0]
    anomalous = [r for r in test_records if r.label == 1]
    scores, maps = fitted.score(anomalous, progress=False)
    from anomalens.data import iterate_batches

    images = torch.cat([b["image"] for b in iterate_batches(anomalous, fitted.input_size, 8)])
    with torch.no_grad():
        features = fitted.local_(images)
        logits = fitted.discriminator_(fitted.adaptor_(positions(features)))
    np.testing.assert_allclose(scores, (-logits).reshape(len(images), -1).amax(1).numpy(), rtol=1e-5, atol=1e-6)
    masks = np.stack([record.mask for record in anomalous])
    assert roc_auc_score(masks.ravel(), maps.ravel()) >= 0.8  # the pasted squares, pixel by pixel
    assert maps[masks].mean() > maps[~masks].mean()


def test_resuming_from_a_checkpoint_gives_the_same_networks(tmp_path):
    records = make_records(8, 0, seed=3, size=32)
    straight = create_detector("simplenet", **SMALL, epochs=3).fit(records, progress=False)
    path = tmp_path / "simplenet.ckpt"
    create_detector("simplenet", **SMALL, epochs=2, checkpoint=str(path)).fit(records, progress=False)
    resumed = create_detector("simplenet", **SMALL, epochs=3, checkpoint=str(path)).fit(records, progress=False)
    assert resumed.history_["loss"] == pytest.approx(straight.history_["loss"], rel=1e-5)
    for network in ("adaptor_", "discriminator_", "local_"):
        for (name, a), b in zip(getattr(straight, network).state_dict().items(),
                                getattr(resumed, network).state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_validation_selects_an_epoch_on_held_out_normals():
    detector = create_detector("simplenet", **SMALL, epochs=3, validation_fraction=0.3)
    detector.fit(make_records(10, 0, seed=4, size=32), progress=False)
    assert len(detector.history_["val_loss"]) == 3
    assert detector.kept_epoch_ == int(np.argmin(detector.history_["val_loss"]))


def test_bad_settings_fail_at_construction():
    with pytest.raises(ConfigError, match="patch_size"):
        create_detector("simplenet", patch_size=2)
    with pytest.raises(ConfigError, match="target_embed_dimension"):
        create_detector("simplenet", target_embed_dimension=1)
    with pytest.raises(ConfigError, match="blur"):
        create_detector("simplenet", image_size=16)


@pytest.mark.export  # the export tier: in make test, not make test-fast
def test_export_agrees_with_torch(tmp_path):
    detector = create_detector("simplenet", **{**SMALL, "image_size": 48, "epochs": 1})
    assert_export_parity(detector, make_records(6, 0, seed=1, size=48), make_records(2, 2, seed=6, size=48), tmp_path)
