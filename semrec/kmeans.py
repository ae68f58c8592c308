"""Vectorised k-means in torch: k-means++ seeding, an iteration cap, empty clusters re-seeded.

Used to initialise the quantiser's codebooks, level after level over the residuals as the
`rqkmeans` tokenizer (GRID, Snap 2025, found residual k-means competitive with a trained
RQ-VAE), and to split items into clusters for the fallback tags (semrec.tags.cluster). Every
random choice comes from a generator seeded with `seed`, so the same data and seed give the
same centroids on the same device.
"""

from typing import NamedTuple

import torch

_CHUNK = 16384  # rows of the distance matrix computed at once


class KMeansResult(NamedTuple):
    centroids: torch.Tensor  # (K, d)
    assignments: torch.Tensor  # (N,) long
    inertia: float  # sum of squared distances to the assigned centroid
    iterations: int


class ResidualKMeansResult(NamedTuple):
    codebooks: list[torch.Tensor]  # per level (K, d)
    codes: torch.Tensor  # (N, L) long
    reconstruction: torch.Tensor  # (N, d): the sum of the chosen centroids


def squared_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(N, d), (K, d) -> (N, K) squared Euclidean distances, clamped at 0 against rounding."""
    out = torch.empty(x.shape[0], centroids.shape[0], dtype=x.dtype, device=x.device)
    c_norm = (centroids * centroids).sum(1)  # (K,)
    for start in range(0, x.shape[0], _CHUNK):
        part = x[start : start + _CHUNK]
        d = (part * part).sum(1, keepdim=True) - 2 * part @ centroids.T + c_norm  # (n, K)
        out[start : start + _CHUNK] = d.clamp_min_(0)
    return out


def _kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Seed k centroids far apart (Arthur & Vassilvitskii 2007): each next one drawn ∝ squared distance."""
    n = x.shape[0]
    x_norm = (x * x).sum(1)  # (N,)

    def distances_to(index: torch.Tensor) -> torch.Tensor:  # (N,) squared distances to point `index`
        return (x_norm - 2 * (x @ x[index].T).squeeze(1) + x_norm[index]).clamp_min_(0)

    first = torch.randint(n, (1,), generator=generator).to(x.device)
    chosen = [first]
    closest = distances_to(first)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # every point coincides with a chosen one: take any unchosen point
            taken = torch.zeros(n, dtype=torch.bool, device=x.device)
            taken[torch.cat(chosen)] = True
            pick = torch.nonzero(~taken)[:1, 0]
        else:
            pick = torch.multinomial((closest / total).cpu(), 1, generator=generator).to(x.device)
        chosen.append(pick)
        closest = torch.minimum(closest, distances_to(pick))
    return x[torch.cat(chosen)].clone()


def balanced_assign(distances: torch.Tensor) -> torch.Tensor:
    """Assign N points to K clusters of at most ceil(N / K) points each, nearest first.

    Rounds of proposals: every unassigned point proposes to its nearest cluster that still has
    room; each cluster accepts its closest proposers up to its remaining room. A round fills at
    least one cluster or assigns every point, so at most K rounds run, each vectorised.
    """
    n, k = distances.shape
    capacity = -(-n // k)
    room = torch.full((k,), capacity, dtype=torch.long, device=distances.device)
    assignments = torch.full((n,), -1, dtype=torch.long, device=distances.device)
    while True:
        waiting = torch.nonzero(assignments < 0).squeeze(1)
        if waiting.numel() == 0:
            return assignments
        masked = distances[waiting].masked_fill(room == 0, float("inf"))  # (W, K)
        best_dist, best = masked.min(1)
        # rank each proposer within its cluster by distance: sort by distance, then stably by cluster
        order = torch.argsort(best_dist, stable=True)
        order = order[torch.argsort(best[order], stable=True)]
        clusters = best[order]
        first_of_cluster = torch.searchsorted(clusters, clusters, right=False)
        rank = torch.arange(order.numel(), device=distances.device) - first_of_cluster
        accepted = order[rank < room[clusters]]
        assignments[waiting[accepted]] = best[accepted]
        room -= torch.bincount(best[accepted], minlength=k)


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    iters: int = 50,
    seed: int = 0,
    balanced: bool = False,
    tol: float = 1e-6,
    init: torch.Tensor | None = None,
) -> KMeansResult:
    """Lloyd's k-means with at most `iters` iterations; stops early once the inertia no longer falls by `tol`.

    An empty cluster is re-seeded with the point farthest from its centroid (the farthest points
    go to the empty clusters, one each), so no centroid ever becomes NaN. `balanced=True` makes the
    clusters equal-sized (no cluster holds more than ceil(N/K) points), which spreads items over
    the codes and so reduces collisions of the full code tuples. `init` (K, d) replaces the
    k-means++ seeding (a warm start).
    """
    if x.dim() != 2:
        raise ValueError(f"kmeans expects a (N, d) matrix, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if k < 1 or k > n:
        raise ValueError(f"cannot make {k} clusters of {n} points: k must be between 1 and the number of points")
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}")
    x = x.detach().float()
    if init is not None and tuple(init.shape) != (k, x.shape[1]):
        raise ValueError(f"init must have shape {(k, x.shape[1])}, got {tuple(init.shape)}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    centroids = init.detach().float().clone() if init is not None else _kmeans_plus_plus(x, k, generator)
    previous = float("inf")
    for iteration in range(1, iters + 1):
        distances = squared_distances(x, centroids)  # (N, K)
        assignments = balanced_assign(distances) if balanced else distances.argmin(1)
        inertia = float(distances.gather(1, assignments[:, None]).sum())
        counts = torch.bincount(assignments, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assignments, x)
        centroids = sums / counts.clamp_min(1)[:, None].to(x.dtype)
        empty = torch.nonzero(counts == 0).squeeze(1)
        if empty.numel():
            own = distances.gather(1, assignments[:, None]).squeeze(1)  # (N,)
            farthest = torch.argsort(own, descending=True, stable=True)[: empty.numel()]
            centroids[empty] = x[farthest]
        if empty.numel() == 0 and iteration > 1 and previous - inertia <= tol * previous:
            break
        previous = inertia
    distances = squared_distances(x, centroids)
    assignments = balanced_assign(distances) if balanced else distances.argmin(1)
    inertia = float(distances.gather(1, assignments[:, None]).sum())
    return KMeansResult(centroids, assignments, inertia, iteration)


def residual_kmeans(
    x: torch.Tensor, *, levels: int, k: int, iters: int = 50, seed: int = 0, balanced: bool = False
) -> ResidualKMeansResult:
    """k-means on x, then on what the first level left unexplained, and so on for `levels` levels.

    With `balanced`, each level's centroids come from balanced k-means, but every point still
    takes its nearest centroid (as `assign_residual` does for a new item): the codes stay a pure
    function of the embedding, so fitting, `semrec tokenize` and cold start agree.
    """
    residual = x.detach().float()
    codebooks = []
    for level in range(levels):
        centroids = kmeans(residual, k, iters=iters, seed=seed + level, balanced=balanced).centroids
        residual = residual - centroids[squared_distances(residual, centroids).argmin(1)]
        codebooks.append(centroids)
    codes, reconstruction = assign_residual(x, codebooks)
    return ResidualKMeansResult(codebooks, codes, reconstruction)


def assign_residual(x: torch.Tensor, codebooks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-centroid codes of points under fixed codebooks: (N, L) codes, (N, d) reconstruction."""
    residual = x.detach().float()
    reconstruction = torch.zeros_like(residual)
    codes = []
    for codebook in codebooks:
        code = squared_distances(residual, codebook).argmin(1)
        chosen = codebook[code]
        reconstruction += chosen
        residual = residual - chosen
        codes.append(code)
    return torch.stack(codes, 1), reconstruction
