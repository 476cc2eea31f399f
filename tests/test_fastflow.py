"""What is specific to FastFlow, and the flow block it shares with CFlow-AD: the log-determinant against autograd's
Jacobian, the likelihood, the loss and map of the paper, training that learns on a frozen encoder, exact
resumption, maps that localise, an export with parity, tiles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from anomalens import create_detector
from anomalens.models.components.normalizing_flows import AffineCouplingBlock, Flow, gaussian_log_likelihood
from anomalens.models.fastflow import conv_subnet, fastflow_loss, fastflow_map
from tests.conftest import TINY_PARAMS, make_records
from tests.export_parity import assert_export_parity

NAME = "fastflow"
SMALL = {"image_size": 32, "batch_size": 4, "device": "cpu"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted(tiny_fit):
    return tiny_fit(NAME)


def _randomised(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter drawn at random (a fresh block is close to the identity, which would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return module


def _linear(i: int, o: int) -> nn.Module:
    return nn.Sequential(nn.Linear(i, 2 * i), nn.ReLU(), nn.Linear(2 * i, o))


@pytest.mark.parametrize("spatial, condition_channels", [(False, 0), (False, 4), (True, 0)])
def test_the_log_determinant_is_the_jacobians(spatial, condition_channels):
    torch.manual_seed(0)
    channels = 5  # odd: the passive half is the larger one
    subnet = conv_subnet(3, 1.0) if spatial else _linear
    flow = _randomised(Flow(channels, [subnet] * 3, clamp=1.5, spatial=spatial, condition_channels=condition_channels), 1)
    shape = (channels, 3, 2) if spatial else (channels,)
    x = torch.randn(1, *shape)
    condition = torch.randn(1, condition_channels) if condition_channels else None
    z, log_det = flow(x, condition)
    assert z.shape == x.shape and log_det.shape == (1,)
    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v.reshape(1, *shape), condition)[0].flatten(), x.flatten())
    assert log_det.item() == pytest.approx(torch.linalg.slogdet(jacobian)[1].item(), rel=1e-4, abs=1e-4)


def test_a_block_permutes_channels_with_its_saved_permutation():
    torch.manual_seed(3)
    block = AffineCouplingBlock(6, _linear, clamp=2.0, spatial=False)
    assert sorted(block.permutation.tolist()) == list(range(6)) and "permutation" in block.state_dict()
    with torch.no_grad():
        block.subnet[-1].weight.zero_(), block.subnet[-1].bias.zero_()  # no coupling: y = x[:, permutation]
    x = torch.randn(4, 6)
    y, log_det = block(x)
    torch.testing.assert_close(y, x[:, block.permutation])
    torch.testing.assert_close(log_det, torch.zeros(4), atol=1e-6, rtol=0)  # γ starts at 1: volume kept


def test_the_likelihood_is_the_standard_normals_plus_the_log_determinant():
    z, log_det = torch.randn(3, 4, 2, 2), torch.randn(3)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1) + log_det
    torch.testing.assert_close(gaussian_log_likelihood(z, log_det), expected)


def test_loss_and_map_match_the_formulas():
    g = torch.Generator().manual_seed(0)
    hidden = [torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 6, 4, 4, generator=g)]
    log_dets = [torch.randn(2, generator=g), torch.randn(2, generator=g)]
    expected = sum((0.5 * (z ** 2).sum(dim=(1, 2, 3)) - j).mean() for z, j in zip(hidden, log_dets))
    assert fastflow_loss(hidden, log_dets).item() == pytest.approx(expected.item(), rel=1e-6)
    likelihoods = [F.interpolate(torch.exp(-0.5 * (z ** 2).mean(1, keepdim=True)), size=(16, 16), mode="bilinear")
                   for z in hidden]
    torch.testing.assert_close(fastflow_map(hidden, (16, 16)), 1 - (likelihoods[0] + likelihoods[1])[:, 0] / 2)
    assert fastflow_map([torch.zeros(1, 4, 8, 8)], (16, 16)).abs().max() < 1e-6  # z = 0: the likeliest, map 0


def test_subnets_alternate_3x3_and_1x1_convolutions(fitted):
    flows = fitted.head_.flows
    assert len(flows) == 3 and all(len(flow.blocks) == 8 for flow in flows)
    kernels = [block.subnet[0].kernel_size[0] for block in flows[0].blocks]
    assert kernels == [3, 1, 3, 1, 3, 1, 3, 1]
    only3 = create_detector(NAME, **SMALL, epochs=1, conv3x3_only=True, flow_steps=2).fit(make_records(6, 0, size=32),
                                                                                          progress=False)
    assert [b.subnet[0].kernel_size[0] for b in only3.head_.flows[0].blocks] == [3, 3]


def test_training_lowers_the_loss_keeps_the_best_epoch_and_leaves_the_encoder_alone(fitted):
    history = fitted.history_
    assert set(history) == {"loss", "val_loss"} and len(history["loss"]) == TINY_PARAMS[NAME]["epochs"]
    assert history["loss"][-1] < history["loss"][0]
    assert fitted.kept_epoch_ == int(np.argmin(history["val_loss"]))
    pristine = create_detector(NAME, **TINY_PARAMS[NAME])
    pristine._build_networks()
    for (key, a), b in zip(fitted.encoder_.state_dict().items(), pristine.encoder_.state_dict().values()):
        torch.testing.assert_close(a, b, msg=key)  # frozen: Adam sees only the LayerNorms and the flows
    assert all(k.split(".")[0] in {"head", "kept_epoch"} for k in fitted._state_tensors())


def test_map_peaks_on_the_pasted_defect(fitted, test_records):
    anomalous = [r for r in test_records if r.label == 1]
    scores, maps = fitted.score(anomalous, progress=False)
    np.testing.assert_allclose(scores, maps.reshape(len(maps), -1).max(1), rtol=1e-6)
    pixel_aurocs = [roc_auc_score(record.mask.ravel(), amap.ravel()) for record, amap in zip(anomalous, maps)]
    assert np.mean(pixel_aurocs) > 0.9 and min(pixel_aurocs) > 0.8
    assert maps.min() >= 0 and maps.max() <= 1  # 1 − a mean of likelihoods in (0, 1]


def test_resuming_from_a_checkpoint_gives_the_same_networks(tmp_path):
    records = make_records(10, 0, seed=3, size=32)
    straight = create_detector(NAME, **SMALL, epochs=3).fit(records, progress=False)
    path = tmp_path / "ff.ckpt"
    create_detector(NAME, **SMALL, epochs=2, checkpoint=str(path)).fit(records, progress=False)
    assert path.is_file()
    resumed = create_detector(NAME, **SMALL, epochs=3, checkpoint=str(path)).fit(records, progress=False)
    for key, values in straight.history_.items():
        assert resumed.history_[key] == pytest.approx(values, rel=1e-5)
    for (key, a), b in zip(straight.head_.state_dict().items(), resumed.head_.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)


def test_features_are_encoded_once_per_fit(monkeypatch):
    from anomalens.models.fastflow import FastFlow

    calls = []
    original = FastFlow._encode
    monkeypatch.setattr(FastFlow, "_encode", lambda self, images: calls.append(len(images)) or original(self, images))
    create_detector(NAME, **SMALL, epochs=4).fit(make_records(10, 0, seed=3, size=32), progress=False)
    # 1 probe for the feature sizes, then each fit and validation image once, not once per epoch (4 epochs).
    assert calls[0] == 1 and sum(calls[1:]) == 10


@pytest.mark.export  # the export tier: in make test, not make test-fast
def test_the_export_gives_the_torch_scores_and_maps(tmp_path):
    # Parity does not need the full depth: 2 blocks per flow keep the export (and OpenVINO's conversion) short.
    detector = create_detector(NAME, **{**TINY_PARAMS[NAME], "epochs": 1, "flow_steps": 2})
    # not square: the resize is part of the check
    assert_export_parity(detector, make_records(10, 0, seed=1), make_records(2, 2, seed=5, size=96), tmp_path,
                         crop_width=80)


def test_trains_and_scores_on_tiles():
    records = make_records(8, 0, seed=4, size=64)
    detector = create_detector(NAME, **{**SMALL, "image_size": 64, "tile_size": 32, "epochs": 1}).fit(records, progress=False)
    assert detector.model_input_size == (32, 32)
    assert [tuple(n.normalized_shape[1:]) for n in detector.head_.norms] == [(8, 8), (4, 4), (2, 2)]
    scores, maps = detector.score(make_records(0, 2, seed=6, size=64), progress=False)
    assert maps.shape == (2, 64, 64) and np.allclose(scores, maps.reshape(2, -1).max(1), rtol=1e-5)
    assert math.isfinite(float(scores.sum()))
