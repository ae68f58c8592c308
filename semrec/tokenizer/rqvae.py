"""RQ-VAE (TIGER, Rajput et al. 2023): an MLP auto-encoder with a residual quantiser in the middle.

embedding (d) → encoder → latent (32) → L residual codebooks → sum of codewords → decoder → d.
loss = reconstruction + Σ_levels (codebook + β·commitment).

`RQVAETokenizer` is the `rqvae` kind (semrec.tokenizer.base): the codebooks are k-means
initialised on a sample of the items, then the model is trained by semrec.train.
"""

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from semrec.settings import TokenizerSettings
from semrec.tokenizer.base import FitInputs, ModuleTokenizer
from semrec.tokenizer.quantize import ResidualQuantizer

INIT_SAMPLE = 16384  # items the codebooks are k-means initialised on (all of them below this)


@dataclass
class RQVAEConfig:
    input_dim: int
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256, 128])
    latent_dim: int = 32
    levels: int = 3
    codebook_size: int = 256
    distance: str = "l2"
    grad_mode: str = "rotation"
    beta: float = 0.25
    gumbel_temperature: list[float] = field(default_factory=lambda: [1.0, 0.1])
    anneal_steps: int = 3000
    kmeans_iters: int = 50
    dead_after: int = 20  # steps a code may stay unused before it is re-seeded (0 = never)
    seed: int = 0

    @classmethod
    def from_settings(cls, settings: TokenizerSettings, input_dim: int, seed: int):
        """From [tokenizer], [tokenizer.rqvae] and the training steps of [tokenizer.train]."""
        vae = settings.rqvae
        return cls(
            input_dim=input_dim,
            hidden_dims=list(vae.hidden_dims),
            latent_dim=vae.latent_dim,
            levels=settings.levels,
            codebook_size=settings.codebook_size,
            distance=vae.distance,
            grad_mode=vae.grad_mode,
            beta=vae.beta,
            gumbel_temperature=list(vae.gumbel_temperature),
            anneal_steps=settings.train.steps,
            kmeans_iters=settings.kmeans_iters,
            dead_after=vae.dead_code_steps if vae.revive_dead_codes else 0,
            seed=seed,
        )


class RQVAEOutput(NamedTuple):
    loss: torch.Tensor  # scalar: reconstruction_loss + quantize_loss
    reconstruction_loss: torch.Tensor  # scalar: mean over items of |x - x̂|²
    quantize_loss: torch.Tensor  # scalar: codebook + β·commitment, summed over levels
    latent: torch.Tensor  # (B, latent_dim): encoder output before quantisation
    quantized: torch.Tensor  # (B, latent_dim): sum of the codewords
    codes: torch.Tensor  # (B, L)
    reconstruction: torch.Tensor  # (B, input_dim)


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    def __init__(self, config: RQVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = mlp([config.input_dim, *config.hidden_dims, config.latent_dim])
        self.decoder = mlp([config.latent_dim, *reversed(config.hidden_dims), config.input_dim])
        self.quantizer = ResidualQuantizer(
            levels=config.levels,
            codebook_size=config.codebook_size,
            dim=config.latent_dim,
            distance=config.distance,
            grad_mode=config.grad_mode,
            beta=config.beta,
            gumbel_temperature=tuple(config.gumbel_temperature),
            anneal_steps=config.anneal_steps,
            kmeans_iters=config.kmeans_iters,
            dead_after=config.dead_after,
            seed=config.seed,
        )

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """k-means initialise the codebooks on the encoded sample x (B, input_dim)."""
        self.quantizer.initialize(self.encoder(x))

    def forward(self, x: torch.Tensor) -> RQVAEOutput:
        latent = self.encoder(x)
        quantized, codes, quantize_loss = self.quantizer(latent)
        reconstruction = self.decoder(quantized)
        reconstruction_loss = (reconstruction.float() - x.float()).pow(2).sum(-1).mean()
        return RQVAEOutput(
            reconstruction_loss + quantize_loss, reconstruction_loss, quantize_loss, latent, quantized, codes,
            reconstruction,
        )

    @torch.no_grad()
    def assign(self, x: torch.Tensor, batch_size: int = 8192) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Codes (N, L), |latent - quantized| (N,) and the reconstruction error |x - x̂|² (N,), in eval mode."""
        was_training = self.training
        self.eval()
        codes, gaps, errors = [], [], []
        for start in range(0, x.shape[0], batch_size):
            part = x[start : start + batch_size]
            out = self(part)
            codes.append(out.codes)
            gaps.append((out.latent.float() - out.quantized.float()).norm(dim=-1))
            errors.append((out.reconstruction.float() - part.float()).pow(2).sum(-1))
        self.train(was_training)
        return torch.cat(codes), torch.cat(gaps), torch.cat(errors)


# -- the `rqvae` tokenizer kind -----------------------------------------------------------------
class TokenizerTask:
    """The training task of `semrec.train.train`: batches of item embeddings (N, d) on the model's device."""

    def __init__(self, model: RQVAE, embeddings: torch.Tensor, batch_size: int, seed: int):
        self.model, self.embeddings = model, embeddings
        self.batch_size, self.seed = batch_size, seed

    def batch(self, step: int) -> torch.Tensor:
        """This rank's share of the step's items (all of them in one process)."""
        from semrec.distributed import share
        from semrec.train import epoch_indices

        index = epoch_indices(self.embeddings.shape[0], self.batch_size, step, self.seed)
        return index[share(len(index))].to(self.embeddings.device)

    def count(self, index: torch.Tensor) -> int:
        """Items the loss of a batch is the mean of."""
        return len(index)

    def after_step(self, step: int, index: torch.Tensor) -> None:
        """Under torchrun, every rank takes rank 0's codebooks: a dead code is re-seeded from each rank's
        own share of the batch, so the ranks' codebooks would drift apart (nothing in one process)."""
        from semrec.distributed import align_from_main

        if any(level.dead_after for level in self.model.quantizer.levels):
            align_from_main(level.codebook for level in self.model.quantizer.levels)

    def loss(self, index: torch.Tensor) -> tuple[torch.Tensor, dict]:
        out = self.model(self.embeddings[index])
        return out.loss, {"recon": out.reconstruction_loss.detach(), "vq": out.quantize_loss.detach()}


class RQVAETokenizer(ModuleTokenizer):
    """The codebooks are k-means initialised on a sample of the items, then the whole model is trained."""

    model_class, config_class = RQVAE, RQVAEConfig
    model: RQVAE

    @classmethod
    def fit(cls, inputs: FitInputs) -> tuple["RQVAETokenizer", dict]:
        settings, seed = inputs.settings.tokenizer, inputs.seed
        torch.manual_seed(seed)
        model = RQVAE(RQVAEConfig.from_settings(settings, int(inputs.embeddings.shape[1]), seed)).to(inputs.device)
        tokenizer = cls.fitted(inputs, model)
        x = inputs.embeddings.to(inputs.device).float()
        return tokenizer, tokenizer.train_model(TokenizerTask(model, x, settings.train.batch_size, seed), inputs)

    def train_model(self, task: TokenizerTask, inputs: FitInputs) -> dict:
        """k-means initialise the codebooks on a sample of the task's items, train; the run's summary."""
        from semrec.train import TrainConfig, train

        x, seed = task.embeddings, inputs.seed
        sample = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:INIT_SAMPLE]
        self.model.initialize(x[sample.to(x.device)])
        config = TrainConfig.from_settings(
            inputs.settings.tokenizer.train, seed=seed, device=str(inputs.device),
            description=f"fitting the {self.config['kind']} tokenizer",
        )
        result = train(task, config, inputs.checkpoint_dir, inputs.fingerprint, inputs.reporter, resume=inputs.resume)
        self.model.eval()
        return {"steps": result.steps, "history": result.history}
