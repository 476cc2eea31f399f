"""The shared math of PatchCore and SPADE: chunked exact kNN and the greedy k-center coreset."""

from __future__ import annotations

import itertools

import pytest
import torch

from anomalens.models.components.coreset import (
    coverage_radius,
    fill_coverage_holes,
    greedy_coreset,
    greedy_stream,
    random_projection,
    voronoi_cells,
)
from anomalens.models.components.knn import ExactNearest, nearest_in_two_groups, nearest_neighbors


def _points(n: int, d: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _naive_greedy(points: torch.Tensor, k: int, start: int) -> list[int]:
    """The textbook loop: all distances to the newest centre, every step."""
    dist = torch.full((points.shape[0],), float("inf"), dtype=points.dtype)
    order = [start]
    for _ in range(k - 1):
        dist = torch.minimum(dist, (points - points[order[-1]]).pow(2).sum(1))
        dist[order] = -1
        order.append(int(dist.argmax()))
    return order


# ------------------------------------------------------------------------------------------ kNN
@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("chunks", [(1024, 4096), (7, 13), (1, 100), (50, 333)])
def test_chunked_knn_equals_brute_force(k, chunks):
    queries, bank = _points(50, 12, 1) + 3.0, _points(333, 12, 2) + 3.0  # offset: exercises the centring
    dist, index = nearest_neighbors(queries, bank, k, query_chunk=chunks[0], bank_chunk=chunks[1])
    ref_dist, ref_index = torch.cdist(queries.double(), bank.double()).topk(k, dim=1, largest=False)
    torch.testing.assert_close(dist.double(), ref_dist, rtol=0, atol=1e-5)
    assert torch.equal(index, ref_index)


@pytest.mark.parametrize("bank_chunk", [7, 100, 1024])
def test_graph_search_distances_and_indices_equal_brute_force(bank_chunk):
    """The exported graph's search: distances without indices (PatchCore's maps), then the index of a few rows
    (eq. 7's m*) — both as the one search with indices gives them."""
    queries, bank = _points(40, 12, 5) + 3.0, _points(333, 12, 6) + 3.0
    search = ExactNearest(bank, bank_chunk=bank_chunk)
    ref_dist, ref_index = torch.cdist(queries.double(), bank.double()).min(1)
    torch.testing.assert_close(search.distances(queries).double(), ref_dist, rtol=0, atol=1e-5)
    assert torch.equal(search.nearest_index(queries), ref_index)
    dist, index = search(queries)
    torch.testing.assert_close(search.distances(queries), dist, rtol=0, atol=0)
    assert torch.equal(search.nearest_index(queries[:3]), index[:3])


def test_knn_on_a_row_subset_equals_knn_on_the_gathered_gallery():
    queries, bank = _points(20, 6, 3), _points(100, 6, 4)
    rows = torch.tensor([90, 3, 41, 7, 66, 12, 5])
    dist, index = nearest_neighbors(queries, bank, 2, rows=rows, bank_chunk=3)
    ref_dist, ref_index = nearest_neighbors(queries, bank[rows], 2)
    torch.testing.assert_close(dist, ref_dist)
    assert torch.equal(index, ref_index)


def test_knn_refuses_k_larger_than_the_gallery():
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbors(_points(3, 4), _points(2, 4), 3)


# -------------------------------------------------------------------------------------- coreset
@pytest.mark.parametrize("active, block", [(4096, 1024), (64, 32), (8, 100)])
def test_lazy_greedy_matches_the_textbook_loop(active, block):
    points = _points(600, 10, 5, torch.float64)  # float64: no near-ties decided by rounding
    got = [i for i, _ in itertools.islice(greedy_stream(points, 17, active=active, block=block), 150)]
    assert got == _naive_greedy(points, 150, 17)


def test_stream_distances_never_increase_and_cover_every_point():
    points = _points(300, 5, 6)
    items = list(greedy_stream(points, 0, active=32, block=128))
    values = [v for _, v in items]
    assert sorted(i for i, _ in items) == list(range(300))
    assert values[0] == float("inf") and all(a >= b for a, b in zip(values, values[1:]))


def test_coreset_is_deterministic_for_a_seed():
    features = _points(2000, 40, 7)
    a = greedy_coreset(features, 100, seed=3, projection_dim=16)
    b = greedy_coreset(features, 100, seed=3, projection_dim=16)
    c = greedy_coreset(features, 100, seed=4, projection_dim=16)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(set(a.tolist())) == 100 and int(a.max()) < 2000


def test_k_centers_hit_k_well_separated_clusters():
    generator = torch.Generator().manual_seed(8)
    k = 7
    centres = torch.eye(k, 20) * 50.0
    labels = torch.randint(0, k, (1400,), generator=generator)
    features = centres[labels] + torch.randn(1400, 20, generator=generator)
    chosen = greedy_coreset(features, k, seed=0, projection_dim=8)
    assert sorted(labels[chosen].tolist()) == list(range(k))


def test_coverage_radius_within_twice_the_brute_force_optimum():
    points = _points(14, 2, 9, torch.float64)
    k = 3
    pairwise = torch.cdist(points, points).numpy()
    optimum = min(pairwise[:, subset].min(1).max() for subset in itertools.combinations(range(points.shape[0]), k))
    for start in range(points.shape[0]):
        chosen = [i for i, _ in itertools.islice(greedy_stream(points, start), k)]
        radius = pairwise[:, chosen].min(1).max()
        assert optimum <= radius <= 2 * optimum + 1e-12


def test_partitioned_approximation_covers_almost_as_well_as_exact():
    # Mixture data, so that cells are meaningful; the ratio measured for seeds 10-12 is 1.02-1.04.
    generator = torch.Generator().manual_seed(10)
    means = torch.randn(30, 16, generator=generator) * 4
    features = means[torch.randint(0, 30, (6000,), generator=generator)] + torch.randn(6000, 16, generator=generator)
    exact = greedy_coreset(features, 600, seed=0, projection_dim=128)
    approx = greedy_coreset(features, 600, seed=0, projection_dim=128, partition_size=1000)
    assert len(set(approx.tolist())) == 600
    ratio = coverage_radius(features, approx) / coverage_radius(features, exact)
    assert ratio < 1.25, ratio


def test_voronoi_cells_partition_all_points_within_the_size_limit():
    points = _points(5000, 8, 11)
    cells = voronoi_cells(points, 700, torch.Generator().manual_seed(0))
    assert max(c.shape[0] for c in cells) <= 700
    assert torch.equal(torch.cat(cells).sort().values, torch.arange(5000))
    duplicates = torch.zeros(1000, 3)  # all identical: still split by size
    assert max(c.shape[0] for c in voronoi_cells(duplicates, 100, torch.Generator().manual_seed(0))) <= 100


def test_random_projection_is_seeded_and_skipped_when_it_would_not_reduce():
    features = _points(10, 200, 12)
    a = random_projection(features, 128, torch.Generator().manual_seed(1))
    b = random_projection(features, 128, torch.Generator().manual_seed(1))
    assert a.shape == (10, 128) and torch.equal(a, b)
    assert random_projection(features, 256, torch.Generator().manual_seed(1)) is features


def test_selection_of_every_point_and_of_one_point():
    features = _points(50, 4, 13)
    assert sorted(greedy_coreset(features, 50).tolist()) == list(range(50))
    assert greedy_coreset(features, 1, seed=5).shape == (1,)
    with pytest.raises(ValueError):
        greedy_coreset(features, 51)


@pytest.mark.parametrize("n_groups", [1, 3, 40])
def test_nearest_in_two_groups_gives_every_groups_masked_nearest_neighbour(n_groups):
    queries, bank = _points(300, 12, seed=1), _points(200, 12, seed=2)
    group = torch.randint(n_groups, (200,), generator=torch.Generator().manual_seed(3)) * 7  # any labels
    d1, i1, g1, d2 = nearest_in_two_groups(queries, bank, group, query_chunk=64, bank_chunk=16)
    full = torch.cdist(queries.double(), bank.double())
    torch.testing.assert_close(d1.double(), full.min(1).values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full[torch.arange(300), i1], full.min(1).values, rtol=1e-5, atol=1e-5)
    assert torch.equal(g1, group[i1])
    for label in group.unique():  # the distance to the bank less one group: d1 unless g1 is that group
        expected = full[:, group != label].min(1).values if (group != label).any() else torch.full((300,), float("inf"))
        got = torch.where(g1 == label, d2, d1)
        torch.testing.assert_close(got.double(), expected.double(), rtol=1e-5, atol=1e-5)


def test_fill_coverage_holes_continues_the_greedy_until_every_row_is_within_its_radius():
    pool, centres = _points(400, 6, seed=4), _points(10, 6, seed=5)
    distance = torch.cdist(pool, centres).min(1).values
    radius = torch.full((400,), float(distance.median()))
    added = fill_coverage_holes(pool, distance, radius)
    assert len(added) and len(set(added.tolist())) == len(added)
    covered = torch.cdist(pool, torch.cat([centres, pool[added]])).min(1).values
    assert bool((covered <= radius + 1e-5).all())
    # farthest first: the first addition is the row farthest from the given centres
    assert int(added[0]) == int(distance.argmax())
    assert len(fill_coverage_holes(pool, distance, distance + 1)) == 0  # nothing outside: nothing added
