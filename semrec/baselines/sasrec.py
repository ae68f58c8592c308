"""SASRec (Kang & McAuley 2018) trained with cross-entropy over the whole catalogue: the ID baseline.

A user's items (left-padded with -1) go through item embeddings scaled by sqrt(d), learned positions
counted from the window's first item, and pre-norm causal self-attention blocks; the output at
position t scores every item by a dot product with the (tied) item embeddings,

    score(t, i) = h_t . e_i,

and the model learns to put the item at t + 1 first. Training covers every position of a window in
one pass (all-positions). The loss is the full softmax cross-entropy (Klenitskiy & Vasilev 2023:
with it SASRec beats the one-negative BCE of the original paper by far), or for large catalogues a
sampled softmax whose logits are corrected by log(K q_i), q the popularity the negatives are drawn
from, so that it estimates the full softmax (Yi et al. 2019).
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class SASRecConfig:
    n_items: int
    max_seq_len: int = 50
    d_model: int = 64
    layers: int = 2
    heads: int = 1
    ff_dim: int = 256
    dropout: float = 0.2
    loss: str = "full"  # full | sampled
    negatives: int = 1024  # sampled only: negatives per step, shared by the step's targets

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    """Pre-norm self-attention and feed-forward, each added back to the residual stream."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.attn_norm, self.ff_norm = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.ff = nn.Sequential(nn.Linear(cfg.d_model, cfg.ff_dim), nn.GELU(), nn.Dropout(cfg.dropout),
                                nn.Linear(cfg.ff_dim, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(B, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                  dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.out(attended.transpose(1, 2).reshape(B, T, d)))
        return x + self.drop(self.ff(self.ff_norm(x)))


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        if cfg.d_model % cfg.heads:
            raise ValueError(f"d_model {cfg.d_model} is not divisible by heads {cfg.heads}")
        self.cfg = cfg
        self.item = nn.Embedding(cfg.n_items + 1, cfg.d_model, padding_idx=cfg.n_items)  # last row: padding
        self.position = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.item.weight, std=cfg.d_model ** -0.5)
        nn.init.normal_(self.position.weight, std=0.02)
        with torch.no_grad():
            self.item.weight[cfg.n_items].zero_()

    def hidden(self, items: Tensor) -> Tensor:
        """Item ids (B, T), left-padded with -1 -> the state after each position (B, T, d).

        Position 0 is each row's first real item. A query attends to the real items at or before it;
        a padding query attends to itself only, so that no row of the mask is empty.
        """
        B, T = items.shape
        if T > self.cfg.max_seq_len:
            items = items[:, T - self.cfg.max_seq_len:]
            T = self.cfg.max_seq_len
        real = items >= 0
        first = T - real.sum(1, keepdim=True)  # column of each row's first real item
        position = (torch.arange(T, device=items.device) - first).clamp(min=0)
        x = self.item(torch.where(real, items, self.cfg.n_items)) * math.sqrt(self.cfg.d_model) + self.position(position)
        x = self.drop(x) * real[..., None]
        causal = torch.ones(T, T, dtype=torch.bool, device=items.device).tril()
        mask = (causal & real[:, None, :]) | torch.eye(T, dtype=torch.bool, device=items.device)
        for block in self.blocks:
            x = block(x, mask[:, None])
        return self.norm(x)

    def scores(self, states: Tensor) -> Tensor:
        """States (M, d) -> a score for every item of the catalogue (M, N)."""
        return states @ self.item.weight[: self.cfg.n_items].T

    def loss(self, states: Tensor, targets: Tensor, negatives: Tensor | None = None,
             log_q: Tensor | None = None) -> Tensor:
        """Cross-entropy of the targets (M,) given their states (M, d): over the whole catalogue, or over
        the target and shared `negatives` (K,) drawn with log-probabilities `log_q` (N,)."""
        if negatives is None:
            return F.cross_entropy(self.scores(states).float(), targets)
        weights = self.item.weight
        positive = (states * weights[targets]).sum(-1, keepdim=True)  # (M, 1)
        negative = states @ weights[negatives].T  # (M, K)
        correction = math.log(len(negatives))
        positive = positive - log_q[targets][:, None] - correction
        negative = negative - log_q[negatives][None, :] - correction
        negative = negative.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))  # accidental hits
        logits = torch.cat([positive, negative], 1).float()
        return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=targets.device))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def rank_items(model: SASRec, histories: Tensor, k: int, batch_size: int = 1024) -> Tensor:
    """Top-k item ids (U, k) for each history (U, S), left-padded with -1: one matrix product per batch."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ranked = torch.empty(len(histories), k, dtype=torch.long)
    with torch.no_grad():
        for start in range(0, len(histories), batch_size):
            rows = slice(start, start + batch_size)
            scores = model.scores(model.hidden(histories[rows].to(device))[:, -1]).float()
            ranked[rows] = scores.topk(k, dim=1, sorted=True).indices.cpu()
    model.train(was_training)
    return ranked
