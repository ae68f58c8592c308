"""Tokenizer health in one function: code usage, perplexity, collisions, and agreement with tags.

Every tokenizer kind, `fit-tokenizer`, `tokenize`, the benchmark and the tests read their
figures from `tokenizer_health`, so a figure means the same everywhere.
"""

import math

import numpy as np
import torch


def collision_groups(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For (N, L) code tuples: each item's group id (N,) and the size of its group (N,)."""
    _, group, counts = torch.unique(codes.cpu(), dim=0, return_inverse=True, return_counts=True)
    return group, counts[group]


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_information(a, b) -> float:
    """NMI of two labelings, I(a; b) / mean(H(a), H(b)) (the arithmetic normalisation); 1.0 if both are constant."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"labelings must be 1-d of equal length, got {a.shape} and {b.shape}")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    nb = int(bi.max()) + 1 if bi.size else 1
    _, joint = np.unique(ai.astype(np.int64) * nb + bi, return_counts=True)
    h_a, h_b = _entropy(np.bincount(ai)), _entropy(np.bincount(bi))
    mutual = h_a + h_b - _entropy(joint)
    if h_a + h_b == 0:
        return 1.0
    return max(0.0, 2 * mutual / (h_a + h_b))


def tokenizer_health(codes: torch.Tensor, codebook_size: int, tags: list[list[str]] | None = None) -> dict:
    """Figures of (N, L) code tuples.

    - usage_l: fraction of level l's codes used by at least one item;
    - perplexity_l: exp(entropy) of level l's code frequencies (codebook_size = perfectly even use);
    - collision_rate: share of items whose full tuple some other item shares;
    - largest_collision_group: most items on one tuple (1 = no collisions);
    - nmi_l (when `tags` gives one list of N tag strings per level): NMI between the level-l codes
      and the level-l tags, for the levels both have. How readable the codes are: 0 = unrelated.
    """
    codes = codes.cpu()
    n, levels = codes.shape
    _, sizes = collision_groups(codes)
    figures: dict = {
        "items": n,
        "collision_rate": float((sizes > 1).float().mean()) if n else 0.0,
        "largest_collision_group": int(sizes.max()) if n else 0,
        "usage": [],
        "perplexity": [],
    }
    for level in range(levels):
        counts = torch.bincount(codes[:, level], minlength=codebook_size).numpy()
        figures["usage"].append(float((counts > 0).mean()))
        figures["perplexity"].append(math.exp(_entropy(counts)) if n else 0.0)
    if tags is not None:
        figures["nmi"] = [
            normalized_mutual_information(codes[:, level].numpy(), np.asarray(level_tags, dtype=object).astype(str))
            for level, level_tags in enumerate(tags[:levels])
        ]
    return figures
