"""What is specific to STPM: the loss and map of eq. 1-5, training that learns, exact resumption."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalens.backbones import FeatureExtractor

from anomalens import create_detector
from anomalens.models.components.trained import TrainedDetector
from anomalens.models.stpm import stpm_loss, stpm_map
from tests.conftest import TINY_PARAMS, make_records

SMALL = {"image_size": 32, "batch_size": 4, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted(tiny_fit):
    return tiny_fit("stpm")


def test_loss_and_map_are_zero_when_the_student_is_the_teacher():
    detector = create_detector("stpm", **SMALL)
    detector._build_networks()
    # The detector's teacher has BatchNorm folded for speed; compare with the plain pretrained network.
    detector.teacher_ = FeatureExtractor(detector.backbone, detector.layers, detector.weights)
    detector.student_.load_state_dict(detector.teacher_.model.state_dict())
    detector.student_.eval()
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        teacher, student = detector._features(images)
        assert stpm_loss(teacher, student).item() == 0.0
        assert detector.anomaly_maps(images).abs().max().item() == 0.0


def test_loss_and_map_match_the_formulas():
    g = torch.Generator().manual_seed(0)
    t = [torch.randn(2, 5, 4, 4, generator=g), torch.randn(2, 7, 2, 2, generator=g)]
    s = [torch.randn(2, 5, 4, 4, generator=g), torch.randn(2, 7, 2, 2, generator=g)]
    expected = 0.0
    cos = []
    for tl, sl in zip(t, s):
        tn, sn = tl / tl.norm(dim=1, keepdim=True), sl / sl.norm(dim=1, keepdim=True)
        h, w = tl.shape[-2:]
        expected = expected + ((tn - sn) ** 2).sum(dim=(1, 2, 3)) / (2 * h * w)  # eq. 1, per image
        cos.append(torch.nn.functional.cosine_similarity(tl, sl, dim=1))
    assert stpm_loss(t, s).item() == pytest.approx(expected.sum().item(), rel=1e-5)  # summed over the batch
    amap = stpm_map(t, s, (4, 4))
    up = torch.nn.functional.interpolate((1 - cos[1]).unsqueeze(1), size=(4, 4), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(amap, (1 - cos[0]) * up, rtol=1e-4, atol=1e-6)  # product over layers


def test_training_lowers_the_loss_and_keeps_the_best_epoch(fitted):
    history = fitted.history_
    assert set(history) == {"loss", "val_loss"}  # curves only; the kept epoch is an attribute
    assert len(history["loss"]) == TINY_PARAMS["stpm"]["epochs"]
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    assert history["val_loss"][-1] < history["val_loss"][0]
    assert fitted.kept_epoch_ == int(np.argmin(history["val_loss"]))


def test_map_peaks_on_the_pasted_defect(fitted, test_records):
    anomalous = [r for r in test_records if r.label == 1]
    scores, maps = fitted.score(anomalous, progress=False)
    np.testing.assert_allclose(scores, maps.reshape(len(maps), -1).max(1), rtol=1e-6)
    for record, amap in zip(anomalous, maps):
        assert amap[record.mask].mean() > 2 * amap[~record.mask].mean()


def test_resuming_from_a_checkpoint_gives_the_same_student(tmp_path):
    records = make_records(10, 0, seed=3, size=32)
    straight = create_detector("stpm", **SMALL, epochs=3).fit(records, progress=False)
    path = tmp_path / "stpm.ckpt"
    create_detector("stpm", **SMALL, epochs=2, checkpoint=str(path)).fit(records, progress=False)
    assert path.is_file()
    resumed = create_detector("stpm", **SMALL, epochs=3, checkpoint=str(path)).fit(records, progress=False)
    assert resumed.history_.keys() == straight.history_.keys()
    for key, values in straight.history_.items():
        assert resumed.history_[key] == pytest.approx(values, rel=1e-5)
    for (name, a), b in zip(straight.student_.state_dict().items(), resumed.student_.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_threshold_holdout_doubles_as_the_validation_set(train_records, monkeypatch):
    seen = {}
    original = TrainedDetector._train

    def spy(self, fit_records, val_records, progress):
        seen["fit"], seen["val"] = len(fit_records), len(val_records)
        return original(self, fit_records, val_records, progress)

    monkeypatch.setattr(TrainedDetector, "_train", spy)
    params = {**TINY_PARAMS["stpm"], "holdout_fraction": 0.25, "epochs": 1}
    detector = create_detector("stpm", **params).fit(train_records, progress=False)
    kept, held = detector.normal_scores.holdout_split(list(train_records))
    assert seen == {"fit": len(kept), "val": len(held)}  # no second split: the student sees every other image
    assert len(detector.history_["val_loss"]) == 1
    create_detector("stpm", **{**params, "validation_fraction": 0}).fit(train_records, progress=False)
    assert seen == {"fit": len(kept), "val": 0}
