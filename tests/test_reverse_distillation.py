"""What is specific to Reverse Distillation: the loss and map of eq. 1-4, the OCBE / decoder shapes, training
that learns, exact resumption, a frozen encoder, maps that localise and an export with parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from anomalens import create_detector
from anomalens.errors import ConfigError
from anomalens.models.components.maps import gaussian_blur
from anomalens.models.components.reverse_resnet import OneClassBottleneck, ReverseDecoder
from anomalens.models.reverse_distillation import rd_loss, rd_map
from tests.conftest import TINY_PARAMS, make_records
from tests.export_parity import assert_export_parity

NAME = "reverse_distillation"
SMALL = {"image_size": 32, "batch_size": 4, "blur_sigma": 1.0, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted(tiny_fit):
    return tiny_fit(NAME)


def _levels(g: torch.Generator, batch: int = 2) -> list[torch.Tensor]:
    return [torch.randn(batch, 5, 8, 8, generator=g), torch.randn(batch, 7, 4, 4, generator=g),
            torch.randn(batch, 9, 2, 2, generator=g)]


def test_loss_and_map_match_the_formulas():
    g = torch.Generator().manual_seed(0)
    e, d = _levels(g), _levels(g)
    expected = 0.0
    for el, dl in zip(e, d):  # eq. 3: one flattened vector per image and level, then the batch mean
        a, b = el.reshape(2, -1), dl.reshape(2, -1)
        expected += (1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean().item()
    assert rd_loss(e, d).item() == pytest.approx(expected, rel=1e-5)
    summed = sum(F.interpolate((1 - F.cosine_similarity(el, dl, dim=1)).unsqueeze(1), size=(16, 16), mode="bilinear",
                               align_corners=True) for el, dl in zip(e, d))  # eq. 4: sum over levels
    torch.testing.assert_close(rd_map(e, d, (16, 16), 0.0), summed[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rd_map(e, d, (16, 16), 1.5), gaussian_blur(summed, 1.5)[:, 0], rtol=1e-4, atol=1e-5)


def test_loss_and_map_are_zero_when_the_decoder_rebuilds_the_encoder():
    g = torch.Generator().manual_seed(1)
    e = _levels(g)
    scaled = [2.5 * x for x in e]  # cosine ignores the scale: only directions are distilled
    assert rd_loss(e, scaled).item() == pytest.approx(0.0, abs=1e-6)
    assert rd_map(e, scaled, (16, 16), 1.0).abs().max().item() < 1e-5


@pytest.mark.parametrize("block, size", [("basic", 64), ("bottleneck", 64), ("basic", 72), ("bottleneck", 100)])
def test_the_decoder_rebuilds_every_level_at_its_size(block, size):
    # Levels of a stride-4/8/16 encoder; 72 and 100 px are not multiples of the bottleneck's stride 32.
    channels, sides = (8, 16, 32), [-(-size // s) for s in (4, 8, 16)]
    levels = [torch.randn(2, c, n, n) for c, n in zip(channels, sides)]
    bottleneck = OneClassBottleneck(channels, block, oce_blocks=2)
    decoder = ReverseDecoder(channels, block, (1, 2, 1), rectified_outputs=False)
    code = bottleneck(levels)
    assert code.shape[1] == 2 * channels[2] and code.shape[-1] == -(-sides[2] // 2)
    rebuilt = decoder(code, [f.shape[-2:] for f in levels])
    assert [r.shape for r in rebuilt] == [f.shape for f in levels]
    assert min(r.min().item() for r in rebuilt) < 0  # signed outputs, as an EfficientNet's linear projections
    rectified = ReverseDecoder(channels, block, (1, 2, 1), rectified_outputs=True)(code, [f.shape[-2:] for f in levels])
    assert min(r.min().item() for r in rectified) >= 0  # a ResNet's stages end in a ReLU


def test_reference_decoders_per_backbone():
    assert create_detector(NAME, device="cpu").depths == (2, (2, 2, 2))  # bundled EfficientNet-Lite: BasicBlocks
    wide = create_detector(NAME, backbone="wide_resnet50_2", device="cpu")
    assert (wide.block_kind, wide.depths) == ("bottleneck", (3, (3, 4, 6)))  # the paper's WideResNet-50
    assert create_detector(NAME, backbone="resnet18", device="cpu").block_kind == "basic"
    assert create_detector(NAME, block="bottleneck", decoder_depths=[1, 1, 1], device="cpu").depths == (3, (1, 1, 1))


def test_training_lowers_the_loss_keeps_the_best_epoch_and_leaves_the_encoder_alone(fitted, train_records):
    history = fitted.history_
    assert set(history) == {"loss", "val_loss"}
    assert len(history["loss"]) == TINY_PARAMS[NAME]["epochs"]
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    assert fitted.kept_epoch_ == int(np.argmin(history["val_loss"]))
    pristine = create_detector(NAME, **TINY_PARAMS[NAME])
    pristine._build_networks()
    for (key, a), b in zip(fitted.encoder_.state_dict().items(), pristine.encoder_.state_dict().values()):
        torch.testing.assert_close(a, b, msg=key)  # frozen: Adam sees only OCBE and decoder
    saved = fitted._state_tensors()
    assert saved and all(k.split(".")[0] in {"bottleneck", "decoder", "kept_epoch"} for k in saved)


def test_map_peaks_on_the_pasted_defect(fitted, test_records):
    anomalous = [r for r in test_records if r.label == 1]
    scores, maps = fitted.score(anomalous, progress=False)
    np.testing.assert_allclose(scores, maps.reshape(len(maps), -1).max(1), rtol=1e-6)
    pixel_aurocs = [roc_auc_score(record.mask.ravel(), amap.ravel()) for record, amap in zip(anomalous, maps)]
    assert np.mean(pixel_aurocs) > 0.9 and min(pixel_aurocs) > 0.8  # the square's pixels rank highest


def test_resuming_from_a_checkpoint_gives_the_same_networks(tmp_path):
    records = make_records(10, 0, seed=3, size=32)
    straight = create_detector(NAME, **SMALL, epochs=3).fit(records, progress=False)
    path = tmp_path / "rd.ckpt"
    create_detector(NAME, **SMALL, epochs=2, checkpoint=str(path)).fit(records, progress=False)
    assert path.is_file()
    resumed = create_detector(NAME, **SMALL, epochs=3, checkpoint=str(path)).fit(records, progress=False)
    for key, values in straight.history_.items():
        assert resumed.history_[key] == pytest.approx(values, rel=1e-5)
    for net in ("bottleneck_", "decoder_"):
        for (key, a), b in zip(getattr(straight, net).state_dict().items(), getattr(resumed, net).state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)


def test_levels_whose_strides_do_not_double_fail_in_one_line():
    with pytest.raises(ConfigError, match="strides"):
        create_detector(NAME, **SMALL, layers=[1, 2, 4], epochs=1).fit(make_records(6, 0, size=32), progress=False)


@pytest.mark.export  # the export tier: in make test, not make test-fast
def test_the_export_gives_the_torch_scores_and_maps(tmp_path):
    detector = create_detector(NAME, **{**TINY_PARAMS[NAME], "epochs": 1})
    # not square: the resize is part of the check
    assert_export_parity(detector, make_records(10, 0, seed=1), make_records(2, 2, seed=5, size=96), tmp_path,
                         crop_width=80)


def test_trains_and_scores_on_tiles():
    # The encoder, OCBE and decoder work on 32-px tiles of 64-px images; maps are blended back to 64 px.
    records = make_records(8, 0, seed=4, size=64)
    params = {**SMALL, "image_size": 64, "tile_size": 32, "epochs": 1}
    detector = create_detector(NAME, **params).fit(records, progress=False)
    assert detector.model_input_size == (32, 32)
    scores, maps = detector.score(make_records(0, 2, seed=6, size=64), progress=False)
    assert maps.shape == (2, 64, 64) and np.allclose(scores, maps.reshape(2, -1).max(1), rtol=1e-5)
