"""The five convolutional autoencoders and their SSIM / L2 losses and residual maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from anomalens import ConfigError, create_detector
from anomalens.models import cae  # noqa: F401  (registers the five CAE detectors)
from anomalens.models.components import cae_networks as networks
from anomalens.models.components.ssim import reconstruction_loss, residual_map, ssim_map
from tests.conftest import make_records

NETWORKS = [networks.MvtecCAENet, networks.BaselineCAENet, networks.InceptionCAENet, networks.ResnetCAENet, networks.SkipCAENet]
NAMES = ["mvtec_cae", "baseline_cae", "inception_cae", "resnet_cae", "skip_cae"]

# The seed's Keras summary of mvtecCAE (grayscale, 256 px): every Conv2D's output (H, W, C) and parameters.
MVTEC_KERAS_SUMMARY = [
    ((128, 128, 32), 544), ((64, 64, 32), 16416), ((32, 32, 32), 16416), ((32, 32, 32), 9248),
    ((16, 16, 64), 32832), ((16, 16, 64), 36928), ((8, 8, 128), 131200), ((8, 8, 64), 73792),
    ((8, 8, 32), 18464), ((8, 8, 1), 2049),
    ((8, 8, 32), 320), ((8, 8, 64), 18496), ((8, 8, 128), 131200), ((16, 16, 64), 73792),
    ((16, 16, 64), 65600), ((32, 32, 32), 18464), ((32, 32, 32), 16416), ((64, 64, 32), 16416),
    ((128, 128, 32), 65568), ((256, 256, 1), 2049),
]


def test_mvtec_cae_matches_the_seeds_keras_summary():
    net = networks.MvtecCAENet(1, 256, 256)
    assert sum(p.numel() for p in net.parameters()) == 746_210
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    shapes = []
    hooks = [c.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:]))) for c in convs]
    with torch.no_grad():
        out = net(torch.rand(1, 1, 256, 256))
    for h in hooks:
        h.remove()
    got = [((h, w, c), sum(p.numel() for p in conv.parameters())) for (c, h, w), conv in zip(shapes, convs)]
    assert got == MVTEC_KERAS_SUMMARY
    assert out.shape == (1, 1, 256, 256)


@pytest.mark.parametrize("network", NETWORKS, ids=lambda n: n.__name__)
@pytest.mark.parametrize("channels", [1, 3])
def test_networks_reconstruct_at_the_input_size_in_0_1(network, channels):
    torch.manual_seed(0)
    size = 32 if network.size_problem(32, 32) is None else 64  # the smallest size each one takes
    net = network(channels, size, size).eval()
    with torch.no_grad():
        out = net(torch.rand(2, channels, size, size))
    assert out.shape == (2, channels, size, size)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_non_square_inputs():
    with torch.no_grad():
        assert networks.MvtecCAENet(1, 64, 96)(torch.rand(1, 1, 64, 96)).shape == (1, 1, 64, 96)
        assert networks.SkipCAENet(1, 96, 128)(torch.rand(1, 1, 96, 128)).shape == (1, 1, 96, 128)


def test_resnet_cae_concatenating_blocks_double_the_channels():
    block = networks._ConcatBasicBlock(64, 64, 1, first=True)
    assert isinstance(block.shortcut, torch.nn.Identity)  # same size and channels: identity shortcut
    assert block(torch.rand(1, 64, 8, 8)).shape == (1, 128, 8, 8)
    down = networks._ConcatBasicBlock(128, 128, 2, first=False)
    assert down(torch.rand(1, 128, 8, 8)).shape == (1, 256, 4, 4)


def test_skip_cae_halves_while_even():
    assert networks._halving_strides(256, 8) == ([2] * 8, 1)
    assert networks._halving_strides(64, 8) == ([2] * 6 + [1, 1], 1)
    assert networks._halving_strides(96, 8) == ([2] * 5 + [1, 1, 1], 3)


# -- Keras 'same' padding ------------------------------------------------------------------------
@pytest.mark.parametrize("size", [7, 8, 16, 33])
@pytest.mark.parametrize("kernel,stride", [(3, 1), (4, 1), (8, 1), (3, 2), (4, 2), (7, 2)])
def test_conv_same_output_size_follows_tensorflow(size, kernel, stride):
    conv = networks.Conv2dSame(2, 3, kernel, stride)
    assert conv(torch.rand(1, 2, size, size)).shape[-1] == -(-size // stride)


@pytest.mark.parametrize("kernel", [3, 4, 8])
def test_conv_same_stride_1_equals_torch_same_padding(kernel):
    conv = networks.Conv2dSame(2, 3, kernel)
    x = torch.rand(1, 2, 10, 9)
    # PyTorch's padding="same" also puts the extra row/column of an even kernel bottom/right.
    expected = F.conv2d(x, conv.weight, conv.bias, padding="same")
    torch.testing.assert_close(conv(x), expected)


@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (4, 2)])
def test_transposed_conv_same_is_the_adjoint_of_conv_same(kernel, stride):
    # TensorFlow defines conv2d_transpose('same') as the gradient of conv2d('same'): ⟨Cx, y⟩ = ⟨x, Cᵀy⟩.
    conv = networks.Conv2dSame(2, 3, kernel, stride)
    deconv = networks.ConvTranspose2dSame(3, 2, kernel, stride)
    with torch.no_grad():
        deconv.weight.copy_(conv.weight)
        conv.bias.zero_()
        deconv.bias.zero_()
        x = torch.rand(1, 2, 12, 12, dtype=torch.float64)
        conv.double(), deconv.double()
        y = torch.rand_like(conv(x))
        assert deconv(y).shape == x.shape
        torch.testing.assert_close((conv(x) * y).sum(), (x * deconv(y)).sum())


# -- losses and residual maps -----------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_residual_map_equals_skimage(channels):
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a = rng.random((2, channels, 30, 27))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    got = residual_map(torch.tensor(a), torch.tensor(b), "ssim").numpy()
    for i in range(2):
        expected = np.mean([
            1 - structural_similarity(a[i, c], b[i, c], win_size=11, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, data_range=1.0, full=True)[1]
            for c in range(channels)
        ], axis=0)
        np.testing.assert_allclose(got[i], expected, atol=1e-5)


def test_ssim_map_interior_averages_to_pytorch_msssim_and_the_loss():
    from pytorch_msssim import ssim

    torch.manual_seed(0)
    a = torch.rand(2, 3, 40, 40)
    b = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    interior = ssim_map(a, b)[..., 5:-5, 5:-5].mean()
    torch.testing.assert_close(interior, ssim(a, b, data_range=1.0))
    torch.testing.assert_close(reconstruction_loss(a, b, "ssim"), 1 - interior)


def test_losses_and_maps_vanish_for_a_perfect_reconstruction():
    x = torch.rand(2, 1, 176, 176)  # MS-SSIM needs > 160 px
    for loss in ("ssim", "mssim", "l2"):
        assert abs(reconstruction_loss(x, x, loss).item()) < 1e-5
    for method in ("ssim", "l2"):
        assert residual_map(x, x, method).abs().max() < 1e-4
    y = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(residual_map(y, 1 - y, "l2"), (2 * y - 1).pow(2).mean(1))
    # l2 loss: ½ Σ (x − x̂)² per image, averaged over the batch (tf.nn.l2_loss per image).
    torch.testing.assert_close(reconstruction_loss(y, 1 - y, "l2"), 0.5 * (2 * y - 1).pow(2).sum() / 2)


# -- detector ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,params,message",
    [
        ("mvtec_cae", {"image_size": 100}, "multiples of 32"),
        ("baseline_cae", {"image_size": 192}, "divide 64"),
        ("inception_cae", {"image_size": 96}, "multiples of 64"),
        ("resnet_cae", {"image_size": (64, 80)}, "multiples of 32"),
        ("skip_cae", {"image_size": 100}, "bottleneck grid would be 25x25"),
        ("mvtec_cae", {"image_size": 128, "loss": "mssim"}, "at least 161 px"),
        ("mvtec_cae", {"loss": "ssim2"}, "parameter loss must be one of"),
        ("mvtec_cae", {"residual": "mssim"}, "parameter residual must be one of"),
        ("mvtec_cae", {"channels": 2}, "parameter channels must be one of 1, 3"),
        ("mvtec_cae", {"image_size": 64, "score_margin": 40}, "score_margin"),
        ("mvtec_cae", {"image_score": "sum"}, "image_score"),
    ],
)
def test_unsupported_settings_fail_clearly_at_creation(name, params, message):
    with pytest.raises(ConfigError, match=message):
        create_detector(name, **params)


def test_defaults_follow_the_reference():
    det = create_detector("mvtec_cae")
    p = det.params
    assert (p["image_size"], p["batch_size"], p["channels"], p["loss"]) == (256, 8, 1, "ssim")
    assert (p["patience"], p["lr_patience"], p["validation_fraction"]) == (12, 6, 0.1)
    assert (p["rotation"], p["shift"], p["brightness"]) == (5.0, 0.05, (0.95, 1.05))
    assert det.residual_method == "ssim"
    assert create_detector("mvtec_cae", loss="l2").residual_method == "l2"
    assert create_detector("mvtec_cae", loss="l2", residual="ssim").residual_method == "ssim"


def test_augmentation_fills_with_edge_pixels_and_keeps_the_range():
    det = create_detector("mvtec_cae", image_size=64, rotation=30.0, shift=0.1)
    augment = det.augmentation
    torch.manual_seed(0)
    flat = torch.full((1, 64, 64), 0.5)
    for _ in range(5):
        out = augment(flat)
        # A constant image stays constant up to the brightness factor: no zero-filled corners.
        assert out.shape == (1, 64, 64) and out.std() < 1e-6 and 0.47 <= out.mean() <= 0.53
    ramp = torch.linspace(0, 1, 64).expand(3, 64, 64).clone()
    out = augment(ramp)
    assert out.shape == (3, 64, 64) and 0 <= out.min() and out.max() <= 1 and not torch.equal(out, ramp)
    assert create_detector("mvtec_cae", augment=False).augmentation is None


@pytest.fixture(scope="module")
def small_data():
    # 32 px leaves no room for conftest's 14-px defect: these tests check mechanics, not accuracy.
    return make_records(10, 0, seed=1, size=32), make_records(4, 0, seed=2, size=32)


@pytest.mark.parametrize("name", NAMES)
def test_fit_and_score_end_to_end(name, small_data):
    train, test = small_data
    size = 64 if name in ("baseline_cae", "inception_cae") else 32  # their smallest sizes
    if size != 32:
        train, test = make_records(6, 0, seed=1), make_records(4, 0, seed=2)
    epochs = 1 if name == "inception_cae" else 2  # the heaviest network at 64 px
    det = create_detector(name, image_size=size, epochs=epochs, batch_size=4, device="cpu").fit(train, progress=False)
    assert len(det.history_["loss"]) == epochs and len(det.history_["val_loss"]) == epochs
    scores, maps = det.score(test, progress=False)
    assert maps.shape == (4, size, size) and maps.dtype == np.float32
    margin = det.score_margin
    np.testing.assert_allclose(scores, maps[:, margin:-margin, margin:-margin].reshape(4, -1).max(1), rtol=1e-6)
    inputs, recons = det.reconstruct(test)
    assert inputs.shape == recons.shape == (4, 1, size, size)
    det.params["image_score"] = "mean"
    interior = maps[:, margin:-margin, margin:-margin].reshape(4, -1)
    np.testing.assert_allclose(det.score(test, progress=False)[0], interior.mean(1), rtol=1e-5)


def test_rgb_l2_training_and_the_seed_fixes_the_result(small_data):
    train, test = small_data
    params = {"image_size": 32, "epochs": 2, "batch_size": 4, "channels": 3, "loss": "l2", "device": "cpu"}
    a = create_detector("mvtec_cae", **params).fit(train, progress=False).score(test, progress=False)
    b = create_detector("mvtec_cae", **params).fit(train, progress=False).score(test, progress=False)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_resuming_from_a_checkpoint_continues_training(small_data, tmp_path):
    train, test = small_data
    params = {"image_size": 32, "batch_size": 4, "device": "cpu", "patience": None}
    straight = create_detector("mvtec_cae", epochs=3, **params).fit(train, progress=False)
    ckpt = tmp_path / "train.ckpt"
    create_detector("mvtec_cae", epochs=2, checkpoint=str(ckpt), **params).fit(train, progress=False)
    resumed = create_detector("mvtec_cae", epochs=3, checkpoint=str(ckpt), **params).fit(train, progress=False)
    assert resumed.history_["loss"] == pytest.approx(straight.history_["loss"])
    np.testing.assert_allclose(resumed.score(test, progress=False)[0], straight.score(test, progress=False)[0], rtol=1e-5)


def test_l2_regularisers_become_adam_weight_decay():
    net = networks.BaselineCAENet(1, 64, 64)
    kernels = {id(p) for p, _ in net.regularized}
    convs_and_dense = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert kernels == {id(m.weight) for m in convs_and_dense}
    assert {f for _, f in net.regularized} == {1e-6}
    assert {f for _, f in networks.ResnetCAENet(1, 32, 32).regularized} == {1e-4}
    assert networks.MvtecCAENet(1, 32, 32).regularized == []


def test_test_run_report_reconstructs_the_cases_it_shows(small_data, tmp_path):
    """`anomalens test` on an autoencoder: the case figures are input / reconstruction / residual."""
    from anomalens.data import AnomalyDataset
    from anomalens.workflow import fit_run, test_run
    from anomalens.workflow.evaluation import reconstruction_loader

    train, test = small_data
    records = test + make_records(0, 2, seed=3)  # 64 px defects, resized to 32 like any input
    data = AnomalyDataset(name="small", train=train, test=records)
    det = fit_run("mvtec_cae", data, tmp_path / "run", {"image_size": 32, "epochs": 1, "batch_size": 4, "device": "cpu"},
                  progress=False)
    load = reconstruction_loader(det, records)
    full = det.reconstruct(records)[1]
    picked = load([5, 0])  # one batched call, in the order asked; (H, W) for 1 channel
    np.testing.assert_allclose(picked[0], full[5, 0], atol=1e-6)
    np.testing.assert_allclose(picked[1], full[0, 0], atol=1e-6)
    test_run(tmp_path / "run", data, progress=False)
    cases = [p for p in (tmp_path / "run" / "cases").glob("*.png")  # the full figures, not the thumbnails
             if not p.stem.endswith("_thumb") and p.name != "preview.png"]
    assert cases
    from anomalens.report.annotated import CASE_PANEL_PX

    with Image.open(cases[0]) as im:  # input | reconstruction | residual + colour bar | ground truth
        assert im.size[0] >= 4 * CASE_PANEL_PX[0]  # 4 panels of at least 192 px (3 without the reconstruction)
    assert reconstruction_loader(create_detector("padim"), records) is None
