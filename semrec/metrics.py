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
