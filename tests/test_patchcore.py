"""What is specific to PatchCore: embedding dimensions, memory-bank size, eq. 7, patch scores, maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anomalens import ConfigError, create_detector
from anomalens.models.patchcore import reweighted_score
from tests.test_crossfit import patchcore_fold_bank
from tests.conftest import IMAGE_SIZE, TINY_PARAMS


@pytest.fixture(scope="module")
def fitted(train_records):
    return create_detector("patchcore", **TINY_PARAMS["patchcore"]).fit(train_records, progress=False)


def test_eq7_reweighting_on_a_hand_made_case():
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    test = torch.tensor([[0.4, 0.0]])  # m* = bank[0], s* = 0.4
    # N_3(m*) = bank[0, 1, 2]; distances from the test patch: 0.4, 0.6, √(0.4² + 1).
    d = np.array([0.4, 0.6, math.sqrt(0.16 + 1.0)])
    expected = (1 - np.exp(d[0]) / np.exp(d).sum()) * 0.4
    got = reweighted_score(test, torch.tensor([0]), bank, num_neighbors=3)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert reweighted_score(test, torch.tensor([0]), bank, num_neighbors=1).item() == pytest.approx(0.4)
    # b larger than the bank: all of it is the neighbourhood.
    d_all = np.array([0.4, 0.6, math.sqrt(1.16), math.hypot(4.6, 5.0)])
    all_weight = 1 - np.exp(d_all[0]) / np.exp(d_all).sum()
    assert reweighted_score(test, torch.tensor([0]), bank, num_neighbors=9).item() == pytest.approx(all_weight * 0.4, rel=1e-6)


def test_eq7_is_stable_for_large_distances():
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]) * 1000
    score = reweighted_score(torch.tensor([[400.0, 0.0]]), torch.tensor([0]), bank, num_neighbors=3)
    # exp(400) overflows float32; evaluated as a softmax the weight is 1 − e^(400−600) − ... ≈ 1.
    assert torch.isfinite(score).all() and score.item() == pytest.approx(400.0, rel=1e-5)


def test_layer_dims_only_reduce():
    det = create_detector("patchcore")
    assert det.layer_dims([40, 112]) == [40, 112]  # efficientnet_lite0: kept as is
    assert det.layer_dims([512, 1024]) == [512, 512]  # WRN50: what the reference pooling yields
    assert create_detector("patchcore", target_embed_dimension=256).layer_dims([128, 256]) == [128, 128]
    assert create_detector("patchcore", pretrain_embed_dimension=64).layer_dims([40, 112]) == [40, 64]


def test_embedding_is_on_the_layer2_grid(fitted, test_records):
    from anomalens.data import iterate_batches

    batch = next(iter(iterate_batches(test_records[:2], IMAGE_SIZE, 2)))
    with torch.inference_mode():
        emb = fitted.embed(batch["image"])
    grid = IMAGE_SIZE // 8
    assert emb.shape == (2, grid * grid, 40 + 112) and fitted.grid_size_ == (grid, grid)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.013])
def test_memory_bank_size_is_the_ceiling_of_the_fraction(train_records, fraction):
    det = create_detector("patchcore", **TINY_PARAMS["patchcore"], holdout_fraction=0, coreset_fraction=fraction)
    det.fit(train_records[:6], progress=False)
    patches = 6 * (IMAGE_SIZE // 8) ** 2
    assert det.memory_bank_.shape == (math.ceil(fraction * patches), 152)


def test_full_bank_scores_training_images_zero_and_patch_scores_are_nearest_distances(train_records, test_records):
    det = create_detector("patchcore", **TINY_PARAMS["patchcore"], holdout_fraction=0, coreset_fraction=1.0, blur_sigma=0)
    det.fit(train_records[:5], progress=False)
    scores, _ = det.score(train_records[:2], progress=False)
    np.testing.assert_allclose(scores, 0, atol=1e-2)
    # Patch scores (the unblurred map on the grid) equal brute-force nearest distances.
    from anomalens.data import iterate_batches

    batch = next(iter(iterate_batches(test_records[-1:], IMAGE_SIZE, 1)))
    with torch.inference_mode():
        emb = det.embed(batch["image"])[0]
    expected = torch.cdist(emb.double(), det.memory_bank_.double()).min(1).values.float()
    _, maps = det.score(test_records[-1:], progress=False)  # blur_sigma=0: the upsampled grid only
    upsampled = torch.nn.functional.interpolate(expected.view(1, 1, *det.grid_size_), size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")
    np.testing.assert_allclose(maps[0], upsampled[0, 0].numpy(), rtol=1e-4, atol=1e-4)


def test_defect_region_is_where_the_map_peaks(fitted, test_records):
    anomalous = [r for r in test_records if r.label == 1]
    _, maps = fitted.score(anomalous, progress=False)
    for record, amap in zip(anomalous, maps):
        # Nearest-neighbour distances have a floor on normal texture: compare with its upper tail.
        assert record.mask.flat[amap.argmax()]
        assert amap[record.mask].mean() > np.quantile(amap[~record.mask], 0.99)


def test_saved_bank_must_match_the_backbone(fitted, tmp_path):
    from anomalens import ModelFileError, load_detector

    from tests.test_tampered_runs import _rewrite_weights

    fitted.save(tmp_path / "run")

    def cut(tensors):
        tensors["memory_bank"] = tensors["memory_bank"][:, :100].contiguous()

    _rewrite_weights(tmp_path / "run", cut)  # a deliberate edit: the hash and the metadata kept in step
    with pytest.raises(ModelFileError, match="memory bank"):
        load_detector(tmp_path / "run")


def test_holdout_is_scored_by_the_bank_of_the_other_images_and_the_final_bank_uses_every_image(train_records):
    params = {**TINY_PARAMS["patchcore"], "holdout_fraction": 0.25}
    detector = create_detector("patchcore", **params)
    kept, held = detector.normal_scores.holdout_split(list(train_records))
    scores, _ = detector._fit_and_score_holdout(kept, held, progress=False)
    everything = create_detector("patchcore", **{**params, "holdout_fraction": 0}).fit(kept + held, progress=False)
    torch.testing.assert_close(detector.memory_bank_, everything.memory_bank_)
    # The held-out images are one fold: scored by the final bank less their entries, its holes filled.
    features = everything._training_patches(kept + held, progress=False)
    held_ids = np.arange(len(kept), len(kept) + len(held))
    bank = patchcore_fold_bank(everything, features, everything.patch_origin(len(kept) + len(held)), held_ids)
    everything.memory_bank_ = bank
    np.testing.assert_allclose(scores, everything._score(held, progress=False)[0], rtol=1e-4)


# ------------------------------------------------------------------ optional approximate search


def test_hnsw_search_matches_exact_search_and_survives_save_load(fitted, train_records, test_records, tmp_path):
    pytest.importorskip("faiss")
    from anomalens import load_detector

    approx = create_detector("patchcore", **TINY_PARAMS["patchcore"], search="hnsw").fit(train_records, progress=False)
    torch.testing.assert_close(approx.memory_bank_, fitted.memory_bank_)  # same bank; only the search differs
    assert approx.threshold_ == pytest.approx(fitted.threshold_)  # held-out images are searched exactly
    exact = fitted.predict(test_records, progress=False)
    found = approx.predict(test_records, progress=False)
    # A bank of a few hundred entries: the graph finds the true nearest neighbour of (almost) every patch.
    np.testing.assert_allclose(found.scores, exact.scores, rtol=1e-4)
    assert np.abs(found.maps - exact.maps).max() <= 1e-3 * exact.maps.max()
    approx.save(tmp_path / "run")
    loaded = load_detector(tmp_path / "run")
    assert loaded.ann_index_ is not None and loaded.ann_index_.size == approx.memory_bank_.shape[0]
    np.testing.assert_array_equal(loaded.predict(test_records, progress=False).scores, found.scores)


def test_hnsw_index_checks_what_it_loads(fitted):
    pytest.importorskip("faiss")
    from anomalens.models.components.ann import HNSWIndex

    bank = fitted.memory_bank_
    saved = HNSWIndex.build(bank).to_tensor()
    with pytest.raises(ValueError, match="holds"):
        HNSWIndex.from_tensor(saved, bank[:-1])
    with pytest.raises(ValueError, match="unreadable"):
        HNSWIndex.from_tensor(saved[: len(saved) // 2], bank)
    dist, index = HNSWIndex.build(bank).search(bank[:5])
    torch.testing.assert_close(dist[:, 0], torch.zeros(5), atol=1e-3, rtol=0)  # each entry finds itself
    assert index[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_hnsw_without_faiss_says_how_to_install_it(monkeypatch, train_records):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ConfigError, match=r"anomalens\[faiss\]"):
        create_detector("patchcore", **TINY_PARAMS["patchcore"], search="hnsw").fit(train_records[:4], progress=False)


# ------------------------------------------------------------------ parameters


@pytest.mark.parametrize("params, message", [
    ({"coreset_fraction": 0}, r"coreset_fraction must be a number in \(0, 1\], got 0"),
    ({"coreset_fraction": 1.5}, r"coreset_fraction must be a number in \(0, 1\], got 1.5"),
    ({"search": "annoy"}, r"search must be one of 'exact', 'hnsw', got 'annoy'"),
    ({"patch_size": 4}, "patch_size must be an odd integer >= 1, got 4"),
    ({"patch_size": 0}, "patch_size must be an integer >= 1"),
    ({"num_neighbors": 0}, "num_neighbors must be an integer >= 1"),
    ({"projection_dim": -1}, "projection_dim must be an integer >= 0"),
    ({"target_embed_dimension": 1}, r"target_embed_dimension must be >= the number of layers \(2\), got 1"),
    ({"layers": [2.5]}, "layers must be a list of integers"),
])
def test_out_of_range_parameters_fail_at_construction(params, message):
    with pytest.raises(ConfigError, match="patchcore: parameter " + message):
        create_detector("patchcore", **params)


def test_parameters_arrive_typed():
    det = create_detector("patchcore", coreset_fraction=1, patch_size=5.0, layers=[1, 2], coreset_partition_size=None)
    assert det.coreset_fraction == 1.0 and isinstance(det.coreset_fraction, float)
    assert det.patch_size == 5 and isinstance(det.patch_size, int)
    assert det.layers == (1, 2) and det.coreset_partition_size is None
