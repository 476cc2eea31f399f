"""What is specific to Reverse Distillation: the loss and map of eq. 1-4, the OCBE / decoder shapes, training
that learns, exact resumption, a frozen encoder, maps that localise and an export with parity; and the same for
``variant="rd++"`` (RD++), with its simplex noise, its Sinkhorn divergence and its projection layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from anomalens import create_detector, load_detector
from anomalens.errors import ConfigError
from anomalens.models.components.maps import gaussian_blur
from anomalens.models.components.optimal_transport import sinkhorn_divergence
from anomalens.models.components.reverse_resnet import OneClassBottleneck, ReverseDecoder
from anomalens.models.components.simplex_noise import add_simplex_patches, fractal_simplex, simplex_noise_3d
from anomalens.models.reverse_distillation import projection_losses, rd_loss, rd_map
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


# -- RD++ (variant="rd++") ------------------------------------------------------------------------------------------
RDPP = {**TINY_PARAMS[NAME], "variant": "rd++"}


@pytest.fixture(scope="module")
def fitted_rdpp(train_records):
    return create_detector(NAME, **RDPP).fit(train_records, progress=False)


def test_simplex_noise_is_smooth_bounded_and_zero_on_its_lattice():
    g = torch.Generator().manual_seed(0)
    permutation = torch.randperm(256, generator=g)
    x, y, z = (40 * torch.rand(20000, generator=g) for _ in range(3))
    noise = simplex_noise_3d(x, y, z, permutation)
    assert noise.abs().max() <= 1.0 and noise.std() > 0.2
    assert (simplex_noise_3d(x + 1e-3, y, z, permutation) - noise).abs().max() < 0.02  # continuous
    i, j, k = (torch.randint(0, 40, (500,), generator=g).float() for _ in range(3))
    unskew = (i + j + k) / 6  # the simplex lattice's corners, in input space: every contribution vanishes there
    assert simplex_noise_3d(i - unskew, j - unskew, k - unskew, permutation).abs().max() < 1e-4  # float32 rounding
    a = fractal_simplex(3, 16, 16, 8.0, 6, 0.6, torch.Generator().manual_seed(1))
    b = fractal_simplex(3, 16, 16, 8.0, 6, 0.6, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, fractal_simplex(3, 16, 16, 8.0, 6, 0.6, torch.Generator()))
    assert a.abs().max() <= sum(0.6 ** o for o in range(6))


def test_each_image_gets_one_patch_of_noise_of_the_asked_size():
    images = torch.rand(6, 3, 64, 48)
    noisy = add_simplex_patches(images, (0.1, 0.25), 6, 0.6, 0.2, torch.Generator().manual_seed(2))
    for changed in (noisy != images).any(1):  # per image, over the channels
        rows, cols = changed.any(1).nonzero()[:, 0], changed.any(0).nonzero()[:, 0]
        height, width = int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1
        assert 6 <= height < 16 and 5 <= width < 12  # [0.1, 0.25) of 64 and of 48 px
        assert changed.sum() > 0.9 * height * width  # one rectangle
    assert (noisy - images).abs().max() <= 0.2 * sum(0.6 ** o for o in range(6))


def test_sinkhorn_divergence_has_its_closed_forms():
    g = torch.Generator().manual_seed(3)
    cloud = torch.rand(2, 40, 5, generator=g)
    shift = torch.tensor([0.1, -0.2, 0.05, 0.3, 0.0])
    moved = cloud.clone().requires_grad_()
    divergence = sinkhorn_divergence(moved, cloud + shift)
    # A translated copy: S_ε = ½‖v‖² at any ε, and its gradient moves the cloud along v.
    torch.testing.assert_close(divergence, torch.full((2,), 0.5 * shift.pow(2).sum().item()), rtol=1e-4, atol=1e-6)
    divergence.sum().backward()
    torch.testing.assert_close(moved.grad.sum(1), -shift.expand(2, 5), rtol=1e-3, atol=1e-5)
    assert sinkhorn_divergence(cloud, cloud[:, torch.randperm(40)]).abs().max() < 1e-6  # the same measure
    one, other = torch.rand(3, 1, 4, generator=g), torch.rand(3, 1, 4, generator=g)
    torch.testing.assert_close(sinkhorn_divergence(one, other), 0.5 * (one - other).pow(2).sum((1, 2)))  # Diracs


def test_projection_losses_match_their_formulas():
    g = torch.Generator().manual_seed(4)
    projected, noisy_projected, noisy = _levels(g, 3), _levels(g, 3), _levels(g, 3)
    terms = projection_losses(projected, noisy_projected, noisy, margin=-0.5)
    reconstruction = np.mean([(1 - F.cosine_similarity(n, p, dim=1)).mean().item() for n, p in zip(noisy_projected, projected)])
    contrast = np.mean([(F.cosine_similarity(p.flatten(1), n.flatten(1)) + 0.5).clamp(min=0).mean().item()
                        for p, n in zip(projected, noisy)])
    assert terms["reconstruction"].item() == pytest.approx(reconstruction, rel=1e-5)
    assert terms["contrast"].item() == pytest.approx(contrast, rel=1e-5)
    assert terms["ssot"].item() > 0
    assert projection_losses(projected, projected, noisy, -0.5)["reconstruction"].item() == pytest.approx(0, abs=1e-6)
    same = [level[:1].expand(3, -1, -1, -1) for level in projected]  # three copies of one image: nothing to compact
    assert projection_losses(same, same, noisy, -0.5)["ssot"].abs().item() < 1e-6


def test_rdpp_trains_its_projections_and_localises_the_pasted_defect(fitted_rdpp, test_records):
    history = fitted_rdpp.history_
    assert set(history) == {"loss", "distillation", "ssot", "reconstruction", "contrast", "val_loss"}
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    saved = fitted_rdpp._state_tensors()
    assert {k.split(".")[0] for k in saved} == {"bottleneck", "decoder", "projection", "kept_epoch"}
    assert fitted_rdpp.inference_module().projection is fitted_rdpp.projection_
    scores, maps = fitted_rdpp.score(test_records, progress=False)
    labels = [r.label for r in test_records]
    assert roc_auc_score(labels, scores) > 0.9
    anomalous = [(r, m) for r, m in zip(test_records, maps) if r.label == 1]
    pixel_aurocs = [roc_auc_score(record.mask.ravel(), amap.ravel()) for record, amap in anomalous]
    assert np.mean(pixel_aurocs) > 0.9 and min(pixel_aurocs) > 0.8


def test_rdpp_with_one_seed_gives_one_model_and_survives_save_and_load(fitted_rdpp, train_records, test_records,
                                                                        tmp_path):
    again = create_detector(NAME, **RDPP).fit(train_records, progress=False)
    for (key, a), b in zip(fitted_rdpp._state_tensors().items(), again._state_tensors().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)
    scores, maps = fitted_rdpp.score(test_records, progress=False)
    loaded = load_detector(fitted_rdpp.save(tmp_path / "run"))
    assert loaded.variant == "rd++"
    loaded_scores, loaded_maps = loaded.score(test_records, progress=False)
    np.testing.assert_allclose(loaded_scores, scores, rtol=1e-6)
    np.testing.assert_allclose(loaded_maps, maps, rtol=1e-5, atol=1e-6)


def test_rdpp_resumed_from_a_checkpoint_equals_an_uninterrupted_fit(tmp_path):
    records = make_records(10, 0, seed=3, size=32)
    params = {**SMALL, "variant": "rd++"}
    straight = create_detector(NAME, **params, epochs=3).fit(records, progress=False)
    path = tmp_path / "rdpp.ckpt"
    create_detector(NAME, **params, epochs=2, checkpoint=str(path)).fit(records, progress=False)
    assert set(torch.load(path, weights_only=True)["state"]["optimizers"]) == {"adam", "projection"}
    resumed = create_detector(NAME, **params, epochs=3, checkpoint=str(path)).fit(records, progress=False)
    for key, values in straight.history_.items():
        assert resumed.history_[key] == pytest.approx(values, rel=1e-5)
    for net in ("bottleneck_", "decoder_", "projection_"):
        for (key, a), b in zip(getattr(straight, net).state_dict().items(), getattr(resumed, net).state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("params, named", [
    ({"variant": "rd+++"}, "variant"), ({"noise_extent": [0.2, 0.1]}, "noise_extent"),
    ({"noise_extent": [0.0, 0.1]}, "noise_extent"), ({"contrast_margin": 2.0}, "contrast_margin"),
    ({"projection_lr": 0.0}, "projection_lr"), ({"noise_octaves": 0}, "noise_octaves"),
    ({"ssot_weight": 0.0, "reconstruction_weight": 0.0, "contrast_weight": 0.0}, "ssot_weight"),
])
def test_a_bad_rdpp_setting_fails_at_construction_naming_it(params, named):
    with pytest.raises(ConfigError, match=named):
        create_detector(NAME, **{"variant": "rd++", **params})


@pytest.mark.export
def test_the_rdpp_export_holds_the_projections_and_gives_the_torch_scores_and_maps(tmp_path):
    detector = create_detector(NAME, **{**RDPP, "epochs": 1})
    assert_export_parity(detector, make_records(10, 0, seed=1), make_records(2, 2, seed=5, size=96), tmp_path,
                         crop_width=80)


@pytest.mark.ddp
def test_rdpp_trains_through_distributed_data_parallel_wrappers_as_in_one_process(tmp_path, train_records,
                                                                                test_records):
    # torchrun wraps each network; a step that called anything but their forward (or one forward twice) fails here.
    import torch.distributed as dist

    from anomalens.distributed.ddp import DataParallelPlan

    params = {**RDPP, "epochs": 1, "seed": 0}
    plain = create_detector(NAME, **params).fit(train_records, progress=False)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        parallel = create_detector(NAME, **params).fit(train_records, progress=False,
                                                       data_parallel=DataParallelPlan(0, 1, torch.device("cpu")))
    finally:
        dist.destroy_process_group()
    np.testing.assert_allclose(parallel.score(test_records, progress=False)[0],
                               plain.score(test_records, progress=False)[0], rtol=1e-5, atol=1e-6)
