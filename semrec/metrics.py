"""All ranking metrics. A hit is the exact item (the whole semantic ID, collision token included),
and every ranked list comes from the full catalogue."""

import torch
from torch import Tensor


def hit_ranks(ranked: Tensor, targets: Tensor) -> Tensor:
    """0-based rank of each user's target in its ranked list (U, k), or k when it is not there: (U,)."""
    hits = ranked == targets[:, None]  # (U, k)
    k = ranked.shape[1]
    return torch.where(hits.any(1), hits.float().argmax(1), k)


def recall_at_k(ranked: Tensor, targets: Tensor, k: int) -> float:
    """Share of users whose target is among the first k items (one target per user)."""
    return float((hit_ranks(ranked[:, :k], targets) < k).float().mean())


def ndcg_at_k(ranked: Tensor, targets: Tensor, k: int) -> float:
    """Mean of 1 / log2(rank + 2) over users whose target is in the first k (one relevant item: IDCG = 1)."""
    rank = hit_ranks(ranked[:, :k], targets).float()
    gain = torch.where(rank < k, 1.0 / torch.log2(rank + 2.0), 0.0)
    return float(gain.mean())


def ranking_metrics(ranked: Tensor, targets: Tensor, ks: list[int]) -> dict[str, float]:
    metrics = {f"recall@{k}": recall_at_k(ranked, targets, k) for k in ks}
    metrics.update({f"ndcg@{k}": ndcg_at_k(ranked, targets, k) for k in ks})
    return metrics


HISTORY_EDGES = (5, 10, 20, 50, 100, 200)
"""Upper bounds (exclusive) of the history-length buckets of `metrics_by_history_length`; the last is open."""


def metrics_by_history_length(ranked: Tensor, targets: Tensor, lengths: Tensor, k: int) -> list[dict]:
    """Recall@k and NDCG@k of the users in each history-length bucket that has users: [{"lengths", "users", ...}]."""
    edges = [0, *HISTORY_EDGES, None]
    buckets = []
    for low, high in zip(edges[:-1], edges[1:]):
        rows = (lengths >= low) & (lengths < high) if high is not None else lengths >= low
        if not bool(rows.any()):
            continue
        name = f"{low}-{high - 1}" if high is not None else f"{low}+"
        buckets.append({"lengths": name, "users": int(rows.sum()),
                        f"recall@{k}": recall_at_k(ranked[rows], targets[rows], k),
                        f"ndcg@{k}": ndcg_at_k(ranked[rows], targets[rows], k)})
    return buckets
