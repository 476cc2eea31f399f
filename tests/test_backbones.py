"""Backbones: the bundled ImageNet weights are real, local weight files load, failures are clear."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from anomalens.backbones import FeatureExtractor, create_backbone_model
from anomalens.errors import ConfigError, ModelFileError


def _classify(model, image: np.ndarray) -> list[int]:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.inference_mode():
        logits = model((x - 0.5) / 0.5)  # mean = std = 0.5 for tf_efficientnet_lite*
    return logits.topk(3).indices[0].tolist()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_bundled_weights_classify_imagenet_photos(name):
    model = create_backbone_model(name).eval()
    cat = _classify(model, skdata.chelsea())
    assert cat[0] in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    assert _classify(model, skdata.coffee())[0] == 967  # espresso


def test_feature_layers_have_known_channels_and_strides():
    extractor = FeatureExtractor("efficientnet_lite0")
    assert extractor.channels == [24, 40, 112] and extractor.strides == [4, 8, 16]
    with torch.inference_mode():
        feats = extractor(torch.rand(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 24, 16, 16), (2, 40, 8, 8), (2, 112, 4, 4)]


def test_grayscale_input_is_replicated():
    extractor = FeatureExtractor("efficientnet_lite0")
    gray = torch.rand(1, 1, 32, 32)
    with torch.inference_mode():
        a, b = extractor(gray)[0], extractor(gray.expand(-1, 3, -1, -1))[0]
    assert torch.equal(a, b)


def test_local_weights_file_is_used(tmp_path):
    reference = create_backbone_model("resnet18", weights="random")
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    extractor = FeatureExtractor("resnet18", weights=str(path))
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        expected = reference.eval().layer1(reference.maxpool(reference.act1(reference.bn1(reference.conv1((x - extractor.mean) / extractor.std)))))
        assert torch.allclose(extractor(x)[0], expected, atol=1e-5)


def test_local_weights_in_efficientnet_pytorch_naming_are_renamed(tmp_path):
    from anomalens.backbones import bundled_weights_path

    path = tmp_path / "lite0.pth"
    path.write_bytes(bundled_weights_path("efficientnet_lite0").read_bytes())
    extractor = FeatureExtractor("efficientnet_lite0", weights=str(path))
    bundled = FeatureExtractor("efficientnet_lite0")
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(extractor(x)[2], bundled(x)[2])


def test_bad_weights_files_are_refused_clearly(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match="junk.pth"):
        FeatureExtractor("resnet18", weights=str(junk))
    with pytest.raises(ModelFileError, match="not found"):
        FeatureExtractor("resnet18", weights=str(tmp_path / "missing.pth"))
    other = tmp_path / "lite0_for_resnet.pth"
    torch.save(create_backbone_model("efficientnet_lite0", weights="random").state_dict(), other)
    with pytest.raises(ModelFileError, match="do not fit"):
        FeatureExtractor("resnet18", weights=str(other))


def test_unknown_backbone_and_offline_download_fail_clearly(monkeypatch):
    with pytest.raises(ConfigError, match="unknown backbone"):
        FeatureExtractor("no_such_net")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="--weights"):
        FeatureExtractor("resnet18")  # would need a download; this machine is offline


@pytest.mark.parametrize("size", [(64, 64), (65, 64), (64, 63), (33, 35)])
@pytest.mark.parametrize("kernel, stride, groups", [(3, 2, 1), (3, 2, 8), (5, 2, 8), (3, 1, 8), (4, 2, 1)])
def test_same_padding_without_the_copy_gives_timms_features_bit_for_bit(size, kernel, stride, groups):
    """SamePaddingConv2d (a zero tap in front of the kernel instead of padding the input) against timm's
    Conv2dSame on even and odd sizes (one extra pixel after, or none), depthwise and dense, even kernels."""
    from timm.layers.conv2d_same import Conv2dSame

    from anomalens.backbones import SamePaddingConv2d

    torch.manual_seed(0)
    conv = Conv2dSame(8, 8, kernel, stride, groups=groups).eval()
    x = torch.randn(2, 8, *size)
    with torch.no_grad():
        assert torch.equal(SamePaddingConv2d(conv)(x), conv(x))
        # channels last, as optimize() runs them on CPU: against timm's in the same layout (oneDNN's order)
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        assert torch.equal(SamePaddingConv2d(conv).to(memory_format=torch.channels_last)(x), conv(x))


def test_optimized_tf_backbone_has_no_padding_copies_and_the_same_features():
    from timm.layers.conv2d_same import Conv2dSame

    from anomalens.backbones import SamePaddingConv2d

    plain = FeatureExtractor("efficientnet_lite0", (1, 2, 3))
    optimized = FeatureExtractor("efficientnet_lite0", (1, 2, 3)).optimize()
    assert any(isinstance(m, Conv2dSame) for m in plain.modules())
    assert not any(isinstance(m, Conv2dSame) for m in optimized.modules())
    assert any(isinstance(m, SamePaddingConv2d) for m in optimized.modules())
    images = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(plain(images), optimized(images)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)  # the BatchNorm fold's rounding only


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_a_prepared_backbone_is_a_fresh_build_and_leaves_the_random_state_a_build_leaves():
    from anomalens import backbones

    backbones._PREPARED.clear()
    torch.manual_seed(3)
    fresh = FeatureExtractor("efficientnet_lite0", (1, 2)).optimize()
    after_fresh = torch.rand(4)
    for _ in range(2):  # the first builds and remembers, the second comes from the memo
        torch.manual_seed(3)
        prepared = FeatureExtractor.prepared("efficientnet_lite0", (1, 2))
        torch.testing.assert_close(torch.rand(4), after_fresh, rtol=0, atol=0)
        assert prepared.channels_last and prepared.folded_batchnorms == fresh.folded_batchnorms
        for (name, a), b in zip(_state(prepared).items(), _state(fresh).values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
        x = torch.rand(2, 3, 64, 64)
        for a, b in zip(prepared(x), fresh(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        next(prepared.parameters()).data.zero_()  # a copy: what a detector does to it stays with it
    assert len(backbones._PREPARED) == 1
    torch.manual_seed(4)  # another random state: built again (the build draws differently)
    FeatureExtractor.prepared("efficientnet_lite0", (1, 2))
    assert len(backbones._PREPARED) == 2


def test_a_prepared_backbone_follows_an_edited_weights_file(tmp_path):
    import time

    path = tmp_path / "w.pth"
    model = create_backbone_model("efficientnet_lite0")
    torch.save(model.state_dict(), path)
    first = FeatureExtractor.prepared("efficientnet_lite0", (1,), str(path))
    time.sleep(0.01)
    state = model.state_dict()
    state["conv_stem.weight"] = state["conv_stem.weight"] * 2
    torch.save(state, path)
    second = FeatureExtractor.prepared("efficientnet_lite0", (1,), str(path))
    x = torch.rand(1, 3, 64, 64)
    assert not torch.allclose(first(x)[0], second(x)[0])
