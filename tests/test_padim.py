"""What is specific to PaDiM: its Gaussian statistics and distances match a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalens import ConfigError, create_detector
from tests.conftest import TINY_PARAMS


def _embeddings(detector, records):
    from anomalens.data import iterate_batches

    with torch.inference_mode():
        return torch.cat([detector.embed(b["image"]) for b in iterate_batches(records, detector.image_size, 8)]).double().numpy()


def test_gaussians_and_distances_match_numpy(train_records, test_records):
    detector = create_detector("padim", **TINY_PARAMS["padim"], holdout_fraction=0).fit(train_records, progress=False)
    train = _embeddings(detector, train_records)  # (N, P, d)
    test = _embeddings(detector, test_records[:3])
    d = train.shape[-1]
    for position in (0, 37, train.shape[1] - 1):
        x = train[:, position]
        mean = x.mean(0)
        cov = np.cov(x, rowvar=False) + 0.01 * np.eye(d)  # eq. 1 of the paper, unbiased estimate
        np.testing.assert_allclose(detector.mean_[position].numpy(), mean, rtol=1e-4, atol=1e-4)
        diff = test[:, position] - mean
        expected = np.sqrt(np.einsum("bi,ij,bj->b", diff, np.linalg.inv(cov), diff))
        got = detector.mahalanobis(torch.from_numpy(test).float())[:, position].numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-3)


def test_random_channel_subset_is_fixed_by_the_seed():
    a = create_detector("padim", n_features=50, seed=3)._choose_channels(176)
    b = create_detector("padim", n_features=50, seed=3)._choose_channels(176)
    c = create_detector("padim", n_features=50, seed=4)._choose_channels(176)
    assert len(a) == 50 and len(set(a.tolist())) == 50 and a.max() < 176
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_paper_channel_counts_for_paper_backbones():
    assert len(create_detector("padim", backbone="resnet18")._choose_channels(448)) == 100
    assert len(create_detector("padim", backbone="wide_resnet50_2")._choose_channels(1792)) == 550


def test_image_score_is_the_map_maximum(train_records, test_records):
    detector = create_detector("padim", **TINY_PARAMS["padim"]).fit(train_records, progress=False)
    scores, maps = detector.score(test_records, progress=False)
    np.testing.assert_allclose(scores, maps.reshape(len(maps), -1).max(1), rtol=1e-6)


def test_defect_region_is_where_the_map_peaks(train_records, test_records):
    detector = create_detector("padim", **TINY_PARAMS["padim"]).fit(train_records, progress=False)
    anomalous = [r for r in test_records if r.label == 1]
    _, maps = detector.score(anomalous, progress=False)
    for record, amap in zip(anomalous, maps):
        assert amap[record.mask].mean() > 2 * amap[~record.mask].mean()


def test_holdout_is_scored_without_itself_and_the_final_model_uses_every_image(train_records):
    params = {**TINY_PARAMS["padim"], "holdout_fraction": 0.25}
    detector = create_detector("padim", **params)
    kept, held = detector.normal_scores.holdout_split(list(train_records))
    held_scores, held_maps = detector._fit_and_score_holdout(kept, held, progress=False)
    # The final Gaussians are those of all images ...
    everything = create_detector("padim", **{**params, "holdout_fraction": 0}).fit(train_records, progress=False)
    torch.testing.assert_close(detector.mean_, everything.mean_, rtol=1e-4, atol=1e-4)
    scale = float(everything.whitener_.abs().max())  # float32 sums in another order: compare at its scale
    torch.testing.assert_close(detector.whitener_, everything.whitener_, rtol=1e-3, atol=1e-3 * scale)
    # ... and the held-out images were scored by the Gaussians of the other images only.
    without = create_detector("padim", **{**params, "holdout_fraction": 0}).fit(kept, progress=False)
    expected_scores, expected_maps = without._score(held, progress=False)
    np.testing.assert_allclose(held_scores, expected_scores, rtol=1e-3)
    np.testing.assert_allclose(held_maps, expected_maps, rtol=1e-3, atol=1e-3 * float(expected_maps.max()))


@pytest.mark.parametrize("params, name", [
    ({"n_features": 0}, "n_features"),
    ({"epsilon": 0.0}, "epsilon"),
    ({"blur_sigma": -1.0}, "blur_sigma"),
    ({"layers": []}, "layers"),
])
def test_out_of_range_parameters_fail_at_construction(params, name):
    with pytest.raises(ConfigError, match=f"padim: parameter {name} must be"):
        create_detector("padim", **params)


def test_more_features_than_the_backbone_has_fails_when_fit_starts(monkeypatch, train_records):
    # The channel count is the backbone's (24 + 40 + 112 for efficientnet_lite0, layers 1-3): it is known
    # once the backbone is built, so the check comes when fit starts, before any image is read.
    detector = create_detector("padim", **TINY_PARAMS["padim"], n_features=177)
    monkeypatch.setattr("anomalens.models.padim.iterate_batches", lambda *a, **k: pytest.fail("images were read"))
    with pytest.raises(ConfigError, match=r"padim: parameter n_features must be in 1\.\.176 .*got 177"):
        detector.fit(train_records, progress=False)


def test_running_sums_merged_from_parts_are_the_sums_of_all_images():
    """``GaussianSums``: what the local fit sums into is what the shards send and the driver merges."""
    from anomalens.models.components.gaussian_sums import GaussianSums

    torch.manual_seed(0)
    batches = [torch.randn(3, 5, 4, dtype=torch.float32) + k for k in range(4)]
    whole = GaussianSums.about(batches[0])
    for batch in batches:
        whole.add(batch)
    parts = []
    for pair in (batches[:2], batches[2:]):
        part = GaussianSums.about(pair[0])
        for batch in pair:
            part.add(batch)
        part.grid = (1, 5)
        parts.append(part)
    before = [(p.total.clone(), p.outer.clone()) for p in parts]
    merged = GaussianSums.merge(parts)
    assert merged.count == whole.count == 12
    assert all(torch.equal(p.total, t) and torch.equal(p.outer, o) for p, (t, o) in zip(parts, before))  # unchanged
    np.testing.assert_allclose((merged.mean + merged.shift.double()).numpy(), (whole.mean + whole.shift.double()).numpy(),
                               rtol=1e-6, atol=1e-6)
    mean_m, white_m, _ = merged.finish(0.01)
    mean_w, white_w, _ = whole.finish(0.01)
    np.testing.assert_allclose(mean_m.numpy(), mean_w.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(white_m.numpy(), white_w.numpy(), rtol=1e-4, atol=1e-4)
    parts[1].grid = (5, 1)
    with pytest.raises(ValueError, match="disagree on the feature grid"):
        GaussianSums.merge(parts)


def test_maps_are_the_upsampled_grid_blurred():
    """upsample_and_blur as two small matrix products: the same maps as bilinear upsampling then the blur."""
    import torch.nn.functional as F

    from anomalens.models.components.maps import gaussian_blur, upsample_and_blur

    grid = torch.rand(3, 7, 9, generator=torch.Generator().manual_seed(0)) * 10
    for size, sigma in (((60, 50), 1.5), ((64, 64), 4.0)):
        expected = gaussian_blur(F.interpolate(grid.unsqueeze(1), size=size, mode="bilinear", align_corners=False), sigma)
        torch.testing.assert_close(upsample_and_blur(grid, size, sigma), expected.squeeze(1), rtol=1e-5, atol=1e-5)
    plain = F.interpolate(grid.unsqueeze(1), size=(20, 30), mode="bilinear", align_corners=False).squeeze(1)
    torch.testing.assert_close(upsample_and_blur(grid, (20, 30), 0.0), plain, rtol=0, atol=0)


@pytest.mark.parametrize("shapes", [[(8, 8), (4, 4), (2, 2)], [(8, 12), (4, 6), (3, 5)], [(7, 9), (4, 5), (2, 3)]])
def test_embedding_is_the_channel_subset_nearest_upsampled_and_laid_out_channels_last(shapes):
    """padim_embedding against the direct computation (select, F.interpolate nearest, concatenate): the same
    values for integer factors (a broadcast copy) and others (interpolate), laid out so that the (B, P, d)
    embeddings are contiguous."""
    import torch.nn.functional as F

    from anomalens.models.padim import padim_embedding

    generator = torch.Generator().manual_seed(0)
    features = [torch.randn(2, c, *shape, generator=generator) for c, shape in zip((5, 6, 7), shapes)]
    local = [torch.tensor([0, 3]), torch.tensor([1, 2, 5]), torch.tensor([6])]
    grid = shapes[0]
    expected = torch.cat([F.interpolate(f[:, i], size=grid, mode="nearest") for f, i in zip(features, local)], 1)
    got = padim_embedding(features, local)
    assert torch.equal(got, expected)
    assert got.flatten(2).transpose(1, 2).is_contiguous()
