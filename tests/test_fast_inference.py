"""The inference speed-ups (BatchNorm folding, channels-last, unused blocks dropped) keep the results.

Stated tolerance: features within 1e-4 relative to their scale; detector scores and maps within
1e-3 relative (float32 rounding of the folded weights, propagated through the detectors' math).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from anomalens import create_detector
from anomalens.backbones import FeatureExtractor, PooledFeatureExtractor, _FrozenBackbone, fold_batchnorm
from tests.conftest import TINY_PARAMS


def _random_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(bn.num_features)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(bn.num_features, generator=g))
        bn.bias.copy_(torch.randn(bn.num_features, generator=g))
    return bn


def test_fold_batchnorm_folds_conv_bn_pairs_and_keeps_the_function():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), _random_bn(nn.BatchNorm2d(8)), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), _random_bn(BatchNormAct2d(8, act_layer=nn.SiLU)),
    ).eval()
    x = torch.randn(2, 3, 16, 16)
    folded, n = fold_batchnorm(model, x)
    assert n == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.SiLU) for m in folded.modules())  # BatchNormAct2d's activation is kept
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_fold_batchnorm_refuses_when_the_conv_output_is_also_used_elsewhere():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), _random_bn(nn.BatchNorm2d(3))

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # folding would change the second use of y

    model = Shared().eval()
    folded, n = fold_batchnorm(model, torch.randn(2, 3, 8, 8))
    assert n == 0 and folded is model


@pytest.mark.parametrize("cls", [FeatureExtractor, PooledFeatureExtractor])
def test_optimized_backbone_gives_the_same_features(cls):
    plain = cls("efficientnet_lite0")
    fast = cls("efficientnet_lite0").optimize()
    assert fast.folded_batchnorms > 10
    x = torch.rand(2, 3, 96, 96)
    with torch.inference_mode():
        for a, b in zip(plain(x), fast(x)):
            assert a.shape == b.shape
            assert (a - b).abs().max() <= 1e-4 * max(1.0, a.abs().max().item())


def test_feature_extractor_runs_only_the_blocks_it_needs():
    import timm

    full = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(1, 2, 3))
    assert len(FeatureExtractor("efficientnet_lite0", (1, 2, 3)).model.blocks) < len(full.blocks)
    assert len(FeatureExtractor("efficientnet_lite0", (1, 2, 3, 4)).model.blocks) == len(full.blocks)


@pytest.mark.parametrize("name", ["padim", "patchcore", "mahalanobis"])
def test_detector_results_do_not_change_with_the_speedups(name, train_records, test_records, monkeypatch):
    fast = create_detector(name, **TINY_PARAMS[name]).fit(train_records, progress=False).predict(test_records, progress=False)
    monkeypatch.setattr(_FrozenBackbone, "optimize", lambda self, *a, **k: self)
    plain = create_detector(name, **TINY_PARAMS[name]).fit(train_records, progress=False).predict(test_records, progress=False)
    np.testing.assert_allclose(fast.scores, plain.scores, rtol=1e-3, atol=1e-4)
    if plain.maps is not None:
        np.testing.assert_allclose(fast.maps, plain.maps, rtol=1e-3, atol=1e-3 * float(np.abs(plain.maps).max()))


@pytest.mark.parametrize("sigma", [1.0, 4.0])
def test_separable_blur_equals_torchvision(sigma):
    """The maps' Gaussian blur (two 1-D passes) is torchvision's k×k blur, borders included."""
    from torchvision.transforms.v2.functional import gaussian_blur as reference

    from anomalens.models.components.maps import blur_kernel_size, gaussian_blur

    maps = torch.rand(3, 1, 48, 40) * 10
    maps[0, 0, :5, :5] = 100.0  # a corner peak: the reflected border matters
    k = blur_kernel_size(sigma)
    expected = reference(maps, kernel_size=[k, k], sigma=[sigma, sigma])
    torch.testing.assert_close(gaussian_blur(maps, sigma), expected, rtol=1e-5, atol=1e-4)


def test_keep_freed_memory_applies_where_glibc_is():
    import platform

    from anomalens.allocator import keep_freed_memory

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is expected
    assert keep_freed_memory() is expected  # idempotent
