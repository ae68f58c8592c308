"""Vector quantisation: one codebook layer (`Quantizer`) and a stack of them over residuals.

Both return the same `(quantized, codes, loss)` tuple and invert it with `decode_codes(codes)`.
How the gradient crosses the non-differentiable nearest-code lookup is a small strategy chosen
by `grad_mode`:

- "ste": straight-through (van den Oord et al. 2017): the gradient of the codeword is copied
  onto the encoder output.
- "rotation": the rotation trick (Fifty et al. 2024, "Restructuring vector quantization with the
  rotation trick"): the encoder output is rotated and rescaled onto its codeword by a rotation
  held constant, so the gradient reaching the encoder is the codeword's gradient turned back by
  that rotation, which keeps the angle between the encoder output and its codeword (the
  rescaling of the gradient is capped, see `rotate_onto`).
- "gumbel": straight-through Gumbel-softmax (Jang et al. 2017) over the negative distances, with
  a temperature annealed over the training steps; the code is sampled while training.

The quantisation runs in float32 even under autocast: bf16 distances pick wrong codes.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from semrec.kmeans import kmeans

DISTANCES = ("l2", "cosine")
GRAD_MODES = ("ste", "rotation", "gumbel")


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor  # (..., d): equals decode_codes(codes) in value, carries the encoder's gradient
    codes: torch.Tensor  # (...,) long for one level, (..., L) for a residual stack
    loss: torch.Tensor  # scalar: codebook loss + beta * commitment loss (summed over levels)


def rotate_onto(e: torch.Tensor, q: torch.Tensor, eps: float = 1e-8, max_scale: float = 1.0) -> torch.Tensor:
    """Return q in value; its gradient reaches e rotated by a constant rotation that takes e onto q.

    With u = e/|e|, v = q/|q| and r = (u+v)/|u+v|, the rotation R = I - 2rrᵀ + 2vuᵀ takes u onto
    v, and (|q|/|e|) R e = q (Fifty et al. 2024). Applied as vector products, never as a d×d
    matrix. The rescaling factor |q|/|e| of the gradient is capped at `max_scale`: deep in a
    residual stack a residual can be tiny beside its codeword (ratios of 2·10⁴ seen on Beauty),
    and the uncapped factor multiplies the gradient until training diverges.
    """
    e_norm = e.norm(dim=-1, keepdim=True).clamp_min(eps)
    q_norm = q.norm(dim=-1, keepdim=True)
    u = (e / e_norm).detach()
    v = (q / q_norm.clamp_min(eps)).detach()
    r = F.normalize(u + v, dim=-1, eps=eps)
    rotated = e - 2 * r * (r * e).sum(-1, keepdim=True) + 2 * v * (u * e).sum(-1, keepdim=True)  # R e
    scale = (q_norm / e_norm).detach().clamp_max(max_scale)
    return q.detach() + scale * (rotated - rotated.detach())


class Quantizer(nn.Module):
    """One codebook of `codebook_size` vectors of size `dim`.

    The codebook is initialised by k-means on the first batch it sees in training (or on a sample
    passed to `initialize`). Codes unused for `dead_after` training steps are re-seeded with the
    batch vectors worst served by the current codebook (0 turns this off).
    """

    def __init__(
        self,
        *,
        codebook_size: int,
        dim: int,
        distance: str = "l2",
        grad_mode: str = "ste",
        beta: float = 0.25,
        gumbel_temperature: tuple[float, float] = (1.0, 0.1),
        anneal_steps: int = 1000,
        kmeans_init: bool = True,
        kmeans_iters: int = 20,
        dead_after: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        if codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, got {codebook_size}")
        if dim < 1:
            raise ValueError(f"dim must be at least 1, got {dim}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if len(gumbel_temperature) != 2 or min(gumbel_temperature) <= 0:
            raise ValueError(f"gumbel_temperature must be two positive numbers (start, end), got {gumbel_temperature}")
        if anneal_steps < 1 or dead_after < 0 or kmeans_iters < 1:
            raise ValueError("anneal_steps and kmeans_iters must be >= 1 and dead_after >= 0")
        self.codebook_size, self.dim = codebook_size, dim
        self.distance, self.grad_mode, self.beta = distance, grad_mode, beta
        self.gumbel_temperature = tuple(float(t) for t in gumbel_temperature)
        self.anneal_steps, self.kmeans_iters, self.dead_after, self.seed = anneal_steps, kmeans_iters, dead_after, seed
        generator = torch.Generator().manual_seed(seed)
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim, generator=generator) / dim**0.5)
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long))
        self.register_buffer("unused_for", torch.zeros(codebook_size, dtype=torch.long))

    def temperature(self) -> float:
        """Gumbel temperature, annealed geometrically from the first to the second value."""
        start, end = self.gumbel_temperature
        progress = min(1.0, int(self.steps) / self.anneal_steps)
        return start * (end / start) ** progress

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, K): squared L2 distance, or 1 - cosine similarity, to every codeword."""
        if self.distance == "cosine":
            return 1 - F.normalize(x, dim=-1) @ F.normalize(self.codebook, dim=-1).T
        c_norm = (self.codebook * self.codebook).sum(1)
        return ((x * x).sum(1, keepdim=True) - 2 * x @ self.codebook.T + c_norm).clamp_min(0)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set the codebook to k-means centroids of x (N >= codebook_size vectors)."""
        x = x.detach().reshape(-1, self.dim).float()
        if x.shape[0] < self.codebook_size:
            raise ValueError(
                f"k-means initialisation needs at least {self.codebook_size} vectors, got {x.shape[0]}: "
                "use a larger first batch or call initialize() with a larger sample"
            )
        data = F.normalize(x, dim=-1) if self.distance == "cosine" else x
        self.codebook.copy_(kmeans(data, self.codebook_size, iters=self.kmeans_iters, seed=self.seed).centroids)
        self.initialized.fill_(True)

    @torch.no_grad()
    def revive_dead_codes(self, x: torch.Tensor) -> int:
        """Re-seed codes unused for `dead_after` steps with the batch vectors farthest from their code."""
        dead = torch.nonzero(self.unused_for >= self.dead_after).squeeze(1)
        if dead.numel() == 0:
            return 0
        alive = self.unused_for < self.dead_after
        worst_served = self.distances(x).masked_fill(~alive, float("inf")).amin(1) if alive.any() else x.norm(dim=1)
        order = torch.argsort(worst_served, descending=True, stable=True)
        chosen = order[torch.arange(dead.numel(), device=x.device) % order.numel()]
        self.codebook[dead] = x[chosen]
        self.unused_for[dead] = 0
        return int(dead.numel())

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        shape = x.shape
        with torch.autocast(x.device.type, enabled=False):
            flat = x.reshape(-1, self.dim).float()  # (N, d)
            if self.training and not bool(self.initialized):
                self.initialize(flat)
            if self.training and self.dead_after:
                self.revive_dead_codes(flat.detach())
            distances = self.distances(flat)  # (N, K)
            if self.training and self.grad_mode == "gumbel":
                gumbel_noise = -torch.empty_like(distances).exponential_().log()
                soft = F.softmax((-distances + gumbel_noise) / self.temperature(), -1)
                codes = soft.argmax(1)
                one_hot = F.one_hot(codes, self.codebook_size).to(soft.dtype)
                quantized = (one_hot - soft.detach() + soft) @ self.codebook  # value: the codeword
            else:
                codes = distances.argmin(1)
                one_hot = F.one_hot(codes, self.codebook_size).to(flat.dtype)
            # a one-hot product, not codebook[codes]: the backward of indexing adds rows in a
            # thread-dependent order on the CPU, which would make training irreproducible
            chosen = one_hot @ self.codebook  # (N, d)
            codebook_loss = (chosen - flat.detach()).pow(2).sum(-1).mean()
            commitment_loss = (flat - chosen.detach()).pow(2).sum(-1).mean()
            if self.grad_mode == "rotation":
                quantized = rotate_onto(flat, chosen.detach())
            elif self.grad_mode == "ste" or not self.training:
                quantized = flat + (chosen - flat).detach()
            if self.training:
                self.steps += 1
                self.unused_for += 1
                self.unused_for[codes] = 0
        return QuantizerOutput(
            quantized.reshape(shape), codes.reshape(shape[:-1]), codebook_loss + self.beta * commitment_loss
        )

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(...,) codes -> (..., d) codewords."""
        return self.codebook[codes]


class ResidualQuantizer(nn.Module):
    """`levels` Quantizers, each coding what the previous ones left: x ≈ c₁ + c₂ + … + c_L.

    Options are given once and shared by every level; `codebook_size` may also be one size per
    level. Each level passes its gradient straight to the encoder output, because the residual it
    quantises is formed with the earlier codewords held constant (a residual formed from the
    straight-through outputs would cancel the gradient of every level after the first).
    """

    def __init__(self, *, levels: int, codebook_size: int | Sequence[int], dim: int, seed: int = 0, **options):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        sizes = [codebook_size] * levels if isinstance(codebook_size, int) else list(codebook_size)
        if len(sizes) != levels:
            raise ValueError(f"codebook_size gives {len(sizes)} sizes for {levels} levels")
        self.levels = nn.ModuleList(
            Quantizer(codebook_size=size, dim=dim, seed=seed + level, **options) for level, size in enumerate(sizes)
        )
        self.dim = dim

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """k-means initialise every level on the residuals of a sample, level after level."""
        residual = x.detach().reshape(-1, self.dim).float()
        for level in self.levels:
            level.initialize(residual)
            residual = residual - level.decode_codes(level.distances(residual).argmin(1))

    def forward_levels(self, x: torch.Tensor) -> list[QuantizerOutput]:
        """One output per level; level l's `quantized` is its own codeword (not the running sum)."""
        outputs, residual = [], x
        for level in self.levels:
            out = level(residual)
            outputs.append(out)
            residual = residual - out.quantized.detach()
        return outputs

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        outputs = self.forward_levels(x)
        quantized = torch.stack([o.quantized for o in outputs]).sum(0)  # (..., d)
        codes = torch.stack([o.codes for o in outputs], -1)  # (..., L)
        return QuantizerOutput(quantized, codes, torch.stack([o.loss for o in outputs]).sum())

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., L) codes -> (..., d): the sum of each level's codeword."""
        if codes.shape[-1] != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} codes per item, got {codes.shape[-1]}")
        return torch.stack([level.decode_codes(codes[..., i]) for i, level in enumerate(self.levels)]).sum(0)
