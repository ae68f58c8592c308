"""Residual k-means (GRID, Snap 2025, found it competitive with a trained RQ-VAE): no training loop.

Level 1 is k-means on the embeddings, level l k-means on what levels 1..l-1 left unexplained;
an item's code at each level is the centroid nearest to its residual. The codebooks are buffers
of `RQKMeans`, so they are saved and loaded through its state_dict like any other model.
`RQKMeansTokenizer` is the `rqkmeans` kind (semrec.tokenizer.base).
"""

from dataclasses import dataclass

import torch
from torch import nn

from semrec.kmeans import assign_residual, residual_kmeans
from semrec.settings import TokenizerSettings
from semrec.tokenizer.base import FitInputs, ModuleTokenizer


@dataclass
class RQKMeansConfig:
    input_dim: int
    levels: int = 3
    codebook_size: int = 256
    kmeans_iters: int = 50
    balanced: bool = False  # equal-sized clusters while fitting (codes are still the nearest centroid)
    seed: int = 0  # level l is fitted with seed + l

    @classmethod
    def from_settings(cls, settings: TokenizerSettings, input_dim: int, seed: int) -> "RQKMeansConfig":
        """From [tokenizer] and [tokenizer.rqkmeans]."""
        return cls(
            input_dim=input_dim,
            levels=settings.levels,
            codebook_size=settings.codebook_size,
            kmeans_iters=settings.kmeans_iters,
            balanced=settings.rqkmeans.balanced,
            seed=seed,
        )


class RQKMeans(nn.Module):
    def __init__(self, config: RQKMeansConfig):
        super().__init__()
        self.config = config
        for level in range(config.levels):
            self.register_buffer(f"codebook_{level}", torch.zeros(config.codebook_size, config.input_dim))

    @property
    def codebooks(self) -> list[torch.Tensor]:
        """One (K, d) codebook per level."""
        return [getattr(self, f"codebook_{level}") for level in range(self.config.levels)]

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Fit the codebooks on x (N, d), level after level over the residuals."""
        config = self.config
        result = residual_kmeans(
            x, levels=config.levels, k=config.codebook_size, iters=config.kmeans_iters, seed=config.seed,
            balanced=config.balanced,
        )
        for codebook, centroids in zip(self.codebooks, result.codebooks):
            codebook.copy_(centroids)

    @torch.no_grad()
    def assign(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Codes (N, L), |x - x̂| (N,) and |x - x̂|² (N,), x̂ being the sum of the chosen centroids."""
        x = x.float()
        codes, reconstruction = assign_residual(x, self.codebooks)
        gaps = (x - reconstruction).norm(dim=-1)
        return codes, gaps, gaps.pow(2)


class RQKMeansTokenizer(ModuleTokenizer):
    """Fitted in one pass of residual k-means; "steps" is 0."""

    model_class, config_class = RQKMeans, RQKMeansConfig
    model: RQKMeans

    @classmethod
    def fit(cls, inputs: FitInputs) -> tuple["RQKMeansTokenizer", dict]:
        config = RQKMeansConfig.from_settings(inputs.settings.tokenizer, int(inputs.embeddings.shape[1]), inputs.seed)
        model = RQKMeans(config).to(inputs.device)
        model.fit(inputs.embeddings.to(inputs.device))
        return cls.fitted(inputs, model), {"steps": 0}
