"""The popularity baseline: every user gets the items seen most often in the training sequences."""

import torch
from torch import Tensor


def popularity_ranking(train_items: Tensor, n_items: int, k: int) -> Tensor:
    """The k items seen most often in the training sequences, most popular first (ties: lower id)."""
    counts = torch.bincount(train_items, minlength=n_items)
    return torch.argsort(-counts, stable=True)[:k]
