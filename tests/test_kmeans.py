import pytest
import torch

from semrec.kmeans import assign_residual, balanced_assign, kmeans, residual_kmeans, squared_distances


def clustered(n_clusters=8, per_cluster=40, dim=6, spread=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, dim, generator=g) * 3
    points = centres.repeat_interleave(per_cluster, 0) + spread * torch.randn(n_clusters * per_cluster, dim, generator=g)
    return points, torch.arange(n_clusters).repeat_interleave(per_cluster)


def test_kmeans_recovers_well_separated_clusters():
    x, truth = clustered()
    result = kmeans(x, 8, iters=30, seed=1)
    # every true cluster maps onto exactly one found cluster and vice versa
    pairs = set(zip(truth.tolist(), result.assignments.tolist()))
    assert len(pairs) == 8
    assert len({found for _, found in pairs}) == 8
    assert result.iterations < 30  # converged before the cap


def test_empty_cluster_is_reseeded_not_nan():
    x = torch.tensor([[0.0], [0.0], [1.0], [10.0], [10.0], [11.0]])
    # the third centroid starts far from every point, so its cluster is empty after the first assignment
    result = kmeans(x, 3, iters=10, init=torch.tensor([[0.0], [10.0], [100.0]]))
    assert torch.isfinite(result.centroids).all()
    assert torch.bincount(result.assignments, minlength=3).min() >= 1
    assert result.inertia < 1.0  # far below the 2-cluster optimum of 4/3


def test_more_clusters_than_distinct_points_stays_finite():
    x = torch.cat([torch.zeros(20, 3), torch.ones(20, 3)])
    result = kmeans(x, 5, iters=5)
    assert torch.isfinite(result.centroids).all()
    assert result.inertia == pytest.approx(0.0, abs=1e-6)


def test_kmeans_is_deterministic_under_the_seed():
    x, _ = clustered(seed=3)
    a, b = kmeans(x, 10, seed=7), kmeans(x, 10, seed=7)
    assert torch.equal(a.centroids, b.centroids)
    assert torch.equal(a.assignments, b.assignments)


def test_iteration_cap_is_respected():
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    assert kmeans(x, 20, iters=2).iterations <= 2


@pytest.mark.parametrize("k", [0, 41])
def test_impossible_k_is_a_value_error(k):
    with pytest.raises(ValueError, match="clusters"):
        kmeans(torch.randn(40, 2), k)


def test_balanced_clusters_respect_capacity_on_skewed_data():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([0.01 * torch.randn(300, 2, generator=g), 5 + torch.randn(20, 2, generator=g)])  # one dense blob
    plain = kmeans(x, 8, seed=0)
    balanced = kmeans(x, 8, seed=0, balanced=True)
    capacity = -(-x.shape[0] // 8)
    assert torch.bincount(balanced.assignments, minlength=8).max() <= capacity
    assert torch.bincount(plain.assignments, minlength=8).max() > capacity


def test_balanced_assign_takes_nearest_cluster_when_there_is_room():
    distances = torch.tensor([[0.0, 5.0], [1.0, 0.0], [0.5, 9.0], [0.1, 8.0]])
    assignments = balanced_assign(distances)  # capacity 2: the two closest to cluster 0 keep it
    assert assignments.tolist() == [0, 1, 1, 0]


def test_residual_kmeans_reduces_error_level_by_level_and_assigns_like_new_items():
    x = torch.randn(400, 8, generator=torch.Generator().manual_seed(0))
    errors = []
    for levels in (1, 2, 3):
        result = residual_kmeans(x, levels=levels, k=8, iters=20, seed=0)
        errors.append(float((x - result.reconstruction).pow(2).sum(1).mean()))
        codes, reconstruction = assign_residual(x, result.codebooks)
        assert torch.equal(codes, result.codes)
        assert torch.allclose(reconstruction, result.reconstruction)
    assert errors[0] > errors[1] > errors[2]


def test_squared_distances_match_the_definition():
    x, c = torch.randn(30, 5), torch.randn(7, 5)
    assert torch.allclose(squared_distances(x, c), torch.cdist(x, c).pow(2), atol=1e-4)
