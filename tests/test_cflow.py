"""What is specific to CFlow-AD: the positional encoding, the per-dimension likelihood and the map normalised by a
reference fixed at fit time (one map per image, whatever it is scored with), fiber batches that visit every
position, exact resumption, maps that localise, an export with parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from anomalens import create_detector
from anomalens.errors import ConfigError
from anomalens.models.cflow import cflow_loss, cflow_map
from anomalens.models.components.normalizing_flows import positional_encoding_2d
from tests.conftest import TINY_PARAMS, make_records
from tests.export_parity import assert_export_parity

NAME = "cflow"
SMALL = {"image_size": 32, "batch_size": 4, "layers": [1, 2, 3], "condition_channels": 16, "coupling_blocks": 2,
         "device": "cpu"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted(tiny_fit):
    return tiny_fit(NAME)


def test_the_positional_encoding_is_sinusoidal_in_columns_then_rows():
    p, h, w = 8, 3, 5
    encoding = positional_encoding_2d(p, h, w)
    assert encoding.shape == (p, h, w)
    for row, col in [(0, 0), (2, 4), (1, 3)]:
        for k in range(p // 4):  # ω_k = 10000^(−2k / (P/2)); columns in the first half, rows in the second
            omega = 1e4 ** (-2 * k / (p // 2))
            assert encoding[2 * k, row, col].item() == pytest.approx(math.sin(col * omega), abs=1e-6)
            assert encoding[2 * k + 1, row, col].item() == pytest.approx(math.cos(col * omega), abs=1e-6)
            assert encoding[p // 2 + 2 * k, row, col].item() == pytest.approx(math.sin(row * omega), abs=1e-6)
            assert encoding[p // 2 + 2 * k + 1, row, col].item() == pytest.approx(math.cos(row * omega), abs=1e-6)
    flat = encoding.flatten(1).T
    assert len(torch.unique(flat, dim=0)) == h * w  # every position has its own condition
    with pytest.raises(ConfigError, match="multiple of 4"):
        create_detector(NAME, condition_channels=6)


def test_loss_and_map_match_the_formulas():
    g = torch.Generator().manual_seed(0)
    logps = [torch.randn(2, 8, 8, generator=g) - 2, torch.randn(2, 4, 4, generator=g) - 2]
    expected = sum(torch.log1p(torch.exp(-lp)).mean() for lp in logps)  # −log σ(x) = log(1 + e^−x)
    assert cflow_loss(logps).item() == pytest.approx(expected.item(), rel=1e-5)
    reference = torch.tensor([0.5, -1.0])
    up = [F.interpolate(torch.exp(lp - r)[:, None], size=(16, 16), mode="bilinear", align_corners=True)[:, 0]
          for lp, r in zip(logps, reference)]
    torch.testing.assert_close(cflow_map(logps, reference, (16, 16)), 2 - up[0] - up[1])


def test_the_reference_is_the_training_peak_and_maps_do_not_depend_on_the_batch(fitted, train_records, test_records):
    features = fitted._encode(torch.stack([torch.as_tensor(r.source).permute(2, 0, 1) for r in train_records]) / 255.0)
    with torch.no_grad():
        peaks = torch.stack([lp.amax() for lp in fitted.decoders_(features)])
    # The fit's images minus the threshold hold-out: the peak over all of them is at least the reference.
    assert torch.all(peaks >= fitted.decoders_.reference - 1e-5) and torch.isfinite(fitted.decoders_.reference).all()
    together = fitted.score(test_records, progress=False)
    alone = [fitted.score([r], progress=False) for r in test_records[:3]]
    for i, (score, amap) in enumerate(alone):  # anomalib's map would change with the other images of the batch
        assert score[0] == pytest.approx(together[0][i], rel=1e-5)
        np.testing.assert_allclose(amap[0], together[1][i], rtol=1e-4, atol=1e-5)


def test_fiber_batches_visit_every_position_of_every_scale():
    features = [torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 4, 4), torch.zeros(4, 1, 2, 2)]
    batches = create_detector(NAME, fiber_batch_size=64, device="cpu")._fiber_batches(features)
    assert len(batches) == 4 and [len(p) for p in batches[0]] == [64, 16, 4]  # 256 / 64 steps; the same share
    for scale, n in enumerate((256, 64, 16)):
        seen = torch.cat([positions[scale] for positions in batches])
        assert sorted(seen.tolist()) == list(range(n))


def test_training_lowers_the_loss_and_keeps_the_best_epoch(fitted):
    history = fitted.history_
    assert set(history) == {"loss", "val_loss"} and len(history["loss"]) == TINY_PARAMS[NAME]["epochs"]
    assert history["loss"][-1] < history["loss"][0]
    assert fitted.kept_epoch_ == int(np.argmin(history["val_loss"]))
    assert all(k.split(".")[0] in {"decoders", "kept_epoch"} for k in fitted._state_tensors())
    assert "decoders.reference" in fitted._state_tensors()


def test_map_peaks_on_the_pasted_defect(fitted, test_records):
    anomalous = [r for r in test_records if r.label == 1]
    scores, maps = fitted.score(anomalous, progress=False)
    np.testing.assert_allclose(scores, maps.reshape(len(maps), -1).max(1), rtol=1e-6)
    pixel_aurocs = [roc_auc_score(record.mask.ravel(), amap.ravel()) for record, amap in zip(anomalous, maps)]
    assert np.mean(pixel_aurocs) > 0.85 and min(pixel_aurocs) > 0.7  # strides 8-32: coarser than FastFlow's


def test_resuming_from_a_checkpoint_gives_the_same_networks(tmp_path):
    records = make_records(10, 0, seed=3, size=32)
    straight = create_detector(NAME, **SMALL, epochs=3).fit(records, progress=False)
    path = tmp_path / "cflow.ckpt"
    create_detector(NAME, **SMALL, epochs=2, checkpoint=str(path)).fit(records, progress=False)
    resumed = create_detector(NAME, **SMALL, epochs=3, checkpoint=str(path)).fit(records, progress=False)
    for key, values in straight.history_.items():
        assert resumed.history_[key] == pytest.approx(values, rel=1e-5)
    for (key, a), b in zip(straight.decoders_.state_dict().items(), resumed.decoders_.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)
    # A checkpoint of a finished training: nothing left to train, the reference is still computed.
    again = create_detector(NAME, **SMALL, epochs=3, checkpoint=str(path)).fit(records, progress=False)
    torch.testing.assert_close(again.decoders_.reference, straight.decoders_.reference, rtol=1e-5, atol=1e-6)


@pytest.mark.export  # the export tier: in make test, not make test-fast
def test_the_export_gives_the_torch_scores_and_maps(tmp_path):
    # Parity does not need the full depth: 2 blocks per flow keep the export (and OpenVINO's conversion) short.
    detector = create_detector(NAME, **{**TINY_PARAMS[NAME], "epochs": 1, "coupling_blocks": 2})
    # not square: the resize is part of the check
    assert_export_parity(detector, make_records(10, 0, seed=1), make_records(2, 2, seed=5, size=96), tmp_path,
                         crop_width=80)
