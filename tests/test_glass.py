"""What is specific to GLASS: the local anomalies' masks, the global anomalies' gradient ascent and truncated
projections (manifold and hypersphere), the hard-mined focal loss, training that separates and localises,
exact resumption, export parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from anomalens import create_detector
from anomalens.errors import ConfigError
from anomalens.models.components.feature_discrimination import Discriminator
from anomalens.models.components.perlin_anomalies import load_anomaly_sources
from anomalens.models.glass import LocalAnomalySynthesizer, global_anomalies, hard_focal_loss
from tests.conftest import TINY_PARAMS, make_records
from tests.export_parity import assert_export_parity

SMALL = {"image_size": 32, "batch_size": 4, "discriminator_hidden": 32, "ascent_steps": 5, "device": "cpu"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted(tiny_fit):
    return tiny_fit("glass")


def test_local_anomaly_masks_are_one_mask_a_union_or_an_intersection():
    synthesizer = LocalAnomalySynthesizer(load_anomaly_sources(None, 64), probability=1.0, blend=(0.2, 0.8))
    images = torch.rand(12, 3, 32, 32)
    out, masks = synthesizer(images, torch.Generator().manual_seed(0))
    assert set(masks.unique().tolist()) <= {0.0, 1.0} and (masks.flatten(1).sum(1) > 0).all()  # never empty
    outside = (masks == 0).expand_as(images)
    assert torch.equal(out[outside], images[outside])
    # With the same draws, a union covers at least what one mask does: the areas vary more than one mask's.
    areas = masks.flatten(1).mean(1)
    assert areas.max() > areas.min()


class _Linear(nn.Module):
    """A fixed discriminator: the logit is a linear function of the feature."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(-1, 1, dim))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return rows @ self.weight


def test_gradient_ascent_moves_towards_normal_within_the_manifold_band():
    torch.manual_seed(0)
    normal = torch.randn(64, 8, requires_grad=True)
    noise = 0.015 * torch.randn(64, 8)
    d = _Linear(8)
    out = global_anomalies(d, normal, noise, steps=5, step_size=0.01, centre=None, radius=None)
    offset = (out - normal).detach()
    lengths = offset.norm(dim=1)
    assert torch.all(lengths >= 0.5 - 1e-5) and torch.all(lengths <= 1.0 + 1e-5)  # projected onto [r, 2r]
    # Ascent on BCE(D(g), 1): the synthetic anomalies end up on D's "normal" side of the noise they started from.
    assert (d(out) < d(normal + noise)).float().mean() > 0.9
    # Back-propagation reaches the normal features unchanged (the offset is a constant).
    out.sum().backward()
    torch.testing.assert_close(normal.grad, torch.ones_like(normal))


def test_gradient_ascent_on_the_hypersphere_keeps_r_to_2r_from_the_centre():
    torch.manual_seed(1)
    normal, centre = torch.randn(32, 6), torch.zeros(32, 6)
    radius = torch.tensor(0.8)
    out = global_anomalies(_Linear(6), normal, 0.015 * torch.randn(32, 6), steps=10, step_size=0.01, centre=centre,
                           radius=radius)
    distances = out.norm(dim=1)
    assert torch.all(distances >= 0.8 - 1e-5) and torch.all(distances <= 1.6 + 1e-5)


def test_no_ascent_steps_leave_plain_gaussian_noise():
    normal, noise = torch.randn(10, 4), 0.015 * torch.randn(10, 4)
    torch.testing.assert_close(global_anomalies(Discriminator(4, 8), normal, noise, 0, 0.001, None, None), normal + noise)


def test_hard_focal_loss_counts_the_harder_half():
    torch.manual_seed(0)
    logits, labels = torch.randn(100), (torch.rand(100) > 0.7).float()
    p = torch.sigmoid(logits)
    p_t = torch.where(labels > 0, p, 1 - p)
    focal = -(1 - p_t) ** 2 * torch.log(p_t)
    torch.testing.assert_close(hard_focal_loss(logits, labels, 0.0, 2.0), focal.mean(), rtol=1e-5, atol=1e-6)
    error = (p - labels) ** 2
    hard = error >= torch.quantile(error, 0.5)
    assert hard.sum() == 50
    torch.testing.assert_close(hard_focal_loss(logits, labels, 0.5, 2.0), focal[hard].mean(), rtol=1e-5, atol=1e-6)


def test_training_lowers_the_loss_and_the_map_localises(fitted, test_records):
    history = fitted.history_
    assert set(history) == {"loss", "normal", "global", "local"}
    assert history["loss"][-1] < history["loss"][0] and history["local"][-1] < history["local"][0]
    anomalous = [r for r in test_records if r.label == 1]
    scores, maps = fitted.score(anomalous, progress=False)
    assert maps.min() >= 0 and maps.max() <= 1 and scores.max() <= 1  # probabilities, blurred
    masks = np.stack([record.mask for record in anomalous])
    assert roc_auc_score(masks.ravel(), maps.ravel()) >= 0.7
    assert maps[masks].mean() > maps[~masks].mean()


def test_the_hypersphere_constraint_trains(train_records, test_records):
    detector = create_detector("glass", **{**TINY_PARAMS["glass"], "constraint": "hypersphere", "standardise": True})
    detector.fit(train_records, progress=False)
    assert not torch.allclose(detector.local_.std, torch.ones_like(detector.local_.std))  # standardised first
    scores = detector.score(test_records, progress=False)[0]
    labels = np.array([r.label for r in test_records])
    assert np.isfinite(scores).all() and roc_auc_score(labels, scores) >= 0.8


def test_resuming_from_a_checkpoint_gives_the_same_networks(tmp_path):
    records = make_records(8, 0, seed=3, size=32)
    straight = create_detector("glass", **SMALL, epochs=3).fit(records, progress=False)
    path = tmp_path / "glass.ckpt"
    create_detector("glass", **SMALL, epochs=2, checkpoint=str(path)).fit(records, progress=False)
    resumed = create_detector("glass", **SMALL, epochs=3, checkpoint=str(path)).fit(records, progress=False)
    for key, values in straight.history_.items():
        assert resumed.history_[key] == pytest.approx(values, rel=1e-5), key
    for network in ("adaptor_", "discriminator_"):
        for (name, a), b in zip(getattr(straight, network).state_dict().items(),
                                getattr(resumed, network).state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_inconsistent_ranges_fail_at_construction():
    with pytest.raises(ConfigError, match="perlin_scales"):
        create_detector("glass", perlin_scales=[3, 3])
    with pytest.raises(ConfigError, match="blend"):
        create_detector("glass", blend=[0.9, 0.2])


@pytest.mark.export  # the export tier: in make test, not make test-fast
def test_export_agrees_with_torch(tmp_path):
    detector = create_detector("glass", **{**SMALL, "image_size": 48, "epochs": 1})
    assert_export_parity(detector, make_records(6, 0, seed=1, size=48), make_records(2, 2, seed=6, size=48), tmp_path)


def _unfolded_reference(features, pretrain_dim, target_dim, patch_size):
    """The reference codes' steps literally (PatchCore's patchify, MeanMapper, Aggregator): unfold, resize, pool."""
    import torch.nn.functional as F

    grid = features[0].shape[-2:]
    levels = []
    for fmap in features:
        b, c, h, w = fmap.shape
        unfolded = F.unfold(fmap, patch_size, padding=patch_size // 2).reshape(b, c * patch_size ** 2, h, w)
        if (h, w) != tuple(grid):
            unfolded = F.interpolate(unfolded, size=grid, mode="bilinear", align_corners=False)
        rows = unfolded.permute(0, 2, 3, 1).reshape(-1, 1, c * patch_size ** 2)
        levels.append(F.adaptive_avg_pool1d(rows, pretrain_dim))
    pooled = F.adaptive_avg_pool1d(torch.cat(levels, 2), target_dim)
    return pooled.reshape(b, *grid, target_dim).permute(0, 3, 1, 2)


@pytest.mark.parametrize("pretrain_dim, target_dim", [(152, 152), (64, 48), (500, 100)])
def test_the_reference_aggregation_equals_unfolding_and_pooling(pretrain_dim, target_dim):
    from anomalens.models.components.patch_features import ReferenceEmbedding

    generator = torch.Generator().manual_seed(0)
    features = [torch.randn(2, 40, 8, 8, generator=generator), torch.randn(2, 112, 4, 4, generator=generator)]
    ours = ReferenceEmbedding([40, 112], pretrain_dim, target_dim, 3)(features)
    torch.testing.assert_close(ours, _unfolded_reference(features, pretrain_dim, target_dim, 3), rtol=1e-4, atol=1e-5)


def test_glass_pools_as_the_reference_and_simplenet_as_the_mean():
    simplenet_params = {k: v for k, v in SMALL.items() if k != "ascent_steps"}
    glass, simplenet = create_detector("glass", **SMALL), create_detector("simplenet", **simplenet_params)
    assert glass.params["aggregation"] == "reference" and simplenet.params["aggregation"] == "mean"
    assert not glass.params["standardise"] and simplenet.params["standardise"]  # GLASS: the authors' features
    for detector in (glass, simplenet):
        detector._build_networks()
    assert glass.local_.reference is not None and glass.local_.dim == 152  # capped at the levels' 40 + 112
    assert simplenet.local_.reference is None and simplenet.local_.dim == 152


def test_a_run_saved_before_the_aggregation_parameter_loads_as_the_mean(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from anomalens import load_detector
    from anomalens.persistence import file_sha256

    records = make_records(6, 0, seed=2, size=32)
    fitted = create_detector("glass", **SMALL, epochs=1, aggregation="mean").fit(records, progress=False)
    run = tmp_path / "run"
    fitted.save(run)
    config = json.loads((run / "detector.json").read_text())
    config["params"].pop("aggregation")
    weights = run / "weights.safetensors"
    with safe_open(str(weights), framework="pt") as fh:
        metadata, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    saved = json.loads(metadata["params"])
    saved.pop("aggregation")
    metadata["params"] = json.dumps(saved, sort_keys=True)
    save_file(tensors, str(weights), metadata=metadata)
    config["weights_sha256"] = file_sha256(weights)
    (run / "detector.json").write_text(json.dumps(config))
    loaded = load_detector(run)
    assert loaded.params["aggregation"] == "mean"
    test = make_records(3, 2, seed=5, size=48)
    np.testing.assert_allclose(loaded.score(test, progress=False)[0], fitted.score(test, progress=False)[0], rtol=1e-5)
