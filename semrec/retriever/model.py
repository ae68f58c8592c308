"""The generative retriever: a transformer that writes the semantic ID of a user's next item.

Vocabulary (token ids), for L code levels of K codes and D collision tokens:

    0 PAD, 1 BOS, 2 reserved (was EOS)
    3 + l*K + c          code c at level l (each level has its own K ids)
    3 + L*K + d          collision token d (D = the largest collision token in the data + 1)
    3 + L*K + D + b      user bin b (absent when user_bins = 0)

An item is its L+1 tokens (codes, then the collision token). A batch is a window of a user's items
(left-padded) and a mask of which of them are targets: each target is predicted from the items
before it in the window, never from itself or a later one. TIGER's prefix examples are windows
whose only target is the last item; all-positions ("causal") training predicts every item of a
window but the first in one pass, so an epoch costs the tokens a user has, not the sum of the
squares of their history lengths. Batches carry level-local codes (code c, collision d, user bin
b; -1 for none) and the model turns them into token ids, so the data code never needs the
vocabulary layout.

Positions are two learned tables added to each token embedding: the slot of a token inside its
item (0..L; L+1 for the user token) and the item's position counted from the window's start
(0 = its first item; max_seq_len + 1 for the user token). Counted from the start, a position
means the same to every target of a window, and a history of n items puts the item being
generated at position n, in training and in decoding alike. Learned absolute tables rather than
T5's relative bias: the sequence has an exact two-level structure (item x slot) that two tiny
tables express directly, and with no additive bias the attention stays on PyTorch's fused kernels.

With `item_ids` (the setting retriever.item_embeddings), each history item's last token also adds a
learned embedding of the item itself, found from its whole semantic ID: IDs in, semantic IDs out.
The last token is the one that predicts the next item, so no target reads its own ID; an item
tokenized after training has no row and reads as its tokens alone.

With `trie_softmax`, each target token's softmax runs over the tokens that continue its prefix to
some catalogue item (the beam search's trie), in training and in decoding alike: the model then
learns p(item) = prod_p p(token_p | history, earlier tokens, valid continuations), a distribution
over the catalogue's items, which is what constrained beam search ranks by. Without it the
softmax runs over every token of the position, and mass on IDs no item has is lost to the ranking.

The architectures are registered in `semrec.registry.ARCHITECTURES`, one module each, as subclasses
of `Retriever` that implement `forward`, `start` and `step_logits` (all that beam.py uses):
- "encoder-decoder" (TIGER, encoder_decoder.py): the encoder reads the user token and the history,
  the decoder generates the next item's L+1 tokens with cross-attention to the encoder.
- "decoder-only" (decoder_only.py): one causal stack over [user, item_1 ... item_n] whose every
  token predicts the next; its encoder_layers + decoder_layers blocks give a parameter count
  comparable to the encoder-decoder.
- "item-level" (item_level.py): a causal stack over [user, item_1 ... item_n] with one position per
  item (the sum of its tokens' embeddings), and small blocks that spell the next item's tokens from
  the last item's state alone.
This module holds what they share: the config, the embeddings, attention blocks, the output head,
saving (semrec.retriever.checkpoint reads a file back).

Decoding (`start` then `step_logits`, used by beam.py) computes the history once per user: the
encoder memory's cross-attention keys and values, or the decoder-only stack's per-layer keys and
values of the history, or the item-level stack's last state. Each beam step then runs only the few
target tokens; the beams of a user share that user's history tensors, never copied per beam.
"""

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semrec.registry import ARCHITECTURES

PAD, BOS = 0, 1
SPECIALS = 3  # PAD, BOS and one reserved id


@dataclass
class RetrieverConfig:
    arch: str
    levels: int  # L code levels per item
    codebook_size: int  # K codes per level
    collision_size: int  # D collision tokens
    user_bins: int
    max_seq_len: int  # items in a history
    d_model: int = 128
    heads: int = 6
    head_dim: int = 64
    encoder_layers: int = 4
    decoder_layers: int = 4
    ff_dim: int = 1024
    dropout: float = 0.1
    label_smoothing: float = 0.0
    item_ids: int = 0  # items with a learned ID embedding (0 = none)
    tie_head: bool = False  # the output head is the code tokens' input embeddings (and a bias)
    trie_softmax: bool = False  # softmax over the tokens that continue a catalogue item's prefix only

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {tuple(ARCHITECTURES)}, got {self.arch!r}")

    @classmethod
    def from_settings(cls, settings, ids) -> "RetrieverConfig":
        """The model config of the [retriever] settings for these semantic IDs (semrec.retriever.data.SemanticIds)."""
        return cls(
            arch=settings.arch, levels=ids.levels, codebook_size=ids.codebook_size, collision_size=ids.collision_size,
            user_bins=settings.user_bins, max_seq_len=settings.max_seq_len, d_model=settings.d_model,
            heads=settings.heads, head_dim=settings.head_dim, encoder_layers=settings.encoder_layers,
            decoder_layers=settings.decoder_layers, ff_dim=settings.ff_dim, dropout=settings.dropout,
            label_smoothing=settings.label_smoothing, item_ids=len(ids.codes) if settings.item_embeddings else 0,
            tie_head=settings.tie_head, trie_softmax=settings.trie_softmax,
        )

    @property
    def positions(self) -> int:
        """Tokens per item: L codes and the collision token."""
        return self.levels + 1

    @property
    def level_sizes(self) -> list[int]:
        """How many tokens each item position can take: K per code level, D for the collision token."""
        return [self.codebook_size] * self.levels + [self.collision_size]

    @property
    def item_vocab(self) -> int:
        return self.levels * self.codebook_size + self.collision_size

    @property
    def vocab_size(self) -> int:
        return SPECIALS + self.item_vocab + self.user_bins

    def vocabulary(self) -> dict:
        """The fields a checkpoint must share with the data it is used on."""
        return {"levels": self.levels, "codebook_size": self.codebook_size, "collision_size": self.collision_size,
                "user_bins": self.user_bins}

    @classmethod
    def from_dict(cls, raw: dict) -> "RetrieverConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


class Batch(NamedTuple):
    items: Tensor  # (B, n, L+1) level-local codes of a window of items; -1 = no item (left-padded)
    user: Tensor  # (B,) user bin; -1 = no user token
    targets: Tensor  # (B, n) bool: the items predicted, each from the window's items before it
    source: Tensor | None = None  # (B, n) training windows: each item's place in the packed training items, -1 = none


class Output(NamedTuple):
    loss: Tensor  # mean cross-entropy over every token of every target
    logits: list[Tensor]  # per position p: (M, level_sizes[p]) for the M targets, over that position's tokens


class Context(NamedTuple):
    """A batch of users' histories, computed once for decoding."""

    kv: list[tuple[Tensor, Tensor]]  # per decoder layer: keys and values (B, H, T, hd) of the history
    valid: Tensor  # (B, T) bool: which history tokens are real
    position: Tensor  # (B,) position of the item being generated: the number of history items
    last: Tensor | None = None  # (B, d) decoder-only: the history's last token's hidden state; item-level: last state


class Dropout(nn.Dropout):
    """nn.Dropout whose mask on the CPU comes from 16-bit slices of full-range 64-bit random integers.

    On the CPU torch draws one random number per element from a single-threaded generator, which made
    dropout a fifth of a training step of the published-size model on Beauty. Four 16-bit draws per
    64-bit number give the same Bernoulli(1 - p) mask (p rounded to 1/65536) about 5x faster. On CUDA
    torch's fused dropout is used as is.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
        draws = bits.view(torch.int16)[:n].view(x.shape)  # uniform on [-32768, 32767]
        keep = draws >= round(self.p * 65536) - 32768
        return x * keep * (1.0 / (1.0 - self.p))


class Attention(nn.Module):
    """Multi-head attention, T5 style: heads * head_dim need not equal d_model; no biases."""

    def __init__(self, cfg: RetrieverConfig):
        super().__init__()
        self.heads, self.head_dim, self.dropout = cfg.heads, cfg.head_dim, cfg.dropout
        inner = cfg.heads * cfg.head_dim
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.kv = nn.Linear(cfg.d_model, 2 * inner, bias=False)
        self.out = nn.Linear(inner, cfg.d_model, bias=False)

    def _split(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)

    def _merge(self, y: Tensor) -> Tensor:
        b, h, t, d = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, h * d))  # (B, T, d_model)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False, keep: list | None = None) -> Tensor:
        """Self-attention of x (B, T, d); `keep` collects its keys and values (for decoding)."""
        k, v = self.project_kv(x)
        if keep is not None:
            keep.append((k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(self._split(self.q(x)), k, v, attn_mask=mask, dropout_p=p,
                                           is_causal=causal and mask is None)
        return self._merge(y)

    def cross(self, x: Tensor, kv: tuple[Tensor, Tensor], mask: Tensor) -> Tensor:
        """Attend from x (B*W, t, d), W beams per user, to each user's memory keys/values (B, H, T, hd).

        The W beams of a user are folded into the query axis, so the memory is never copied per beam;
        mask (B, 1, W*t or 1, T) says which memory tokens each query may see.
        """
        k, v = kv
        b = k.shape[0]
        q = self._split(self.q(x))  # (B*W, H, t, hd)
        w, t = q.shape[0] // b, q.shape[2]
        q = q.view(b, w, self.heads, t, self.head_dim).transpose(1, 2).reshape(b, self.heads, w * t, self.head_dim)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, H, W*t, hd)
        y = y.view(b, self.heads, w, t, self.head_dim).transpose(1, 2).reshape(b * w, self.heads, t, self.head_dim)
        return self._merge(y)

    def with_prefix(self, x: Tensor, prefix: tuple[Tensor, Tensor], valid: Tensor) -> Tensor:
        """Causal self-attention of x (B*W, t, d) that also sees each user's history keys/values (B, H, T, hd).

        The decoder-only model's decoding step: one softmax over [history, own earlier tokens],
        computed from the shared history tensors without copying them per beam.
        """
        kp, vp = prefix
        b, h, hd = kp.shape[0], self.heads, self.head_dim
        q = self._split(self.q(x))
        k, v = self.project_kv(x)
        w, t = q.shape[0] // b, q.shape[2]
        q, k, v = (z.view(b, w, h, t, hd) for z in (q, k, v))  # (B, W, H, t, hd)
        scale = 1.0 / math.sqrt(hd)
        s_prefix = torch.einsum("bwhtd,bhsd->bwhts", q, kp) * scale  # (B, W, H, t, T)
        s_prefix = s_prefix.masked_fill(~valid[:, None, None, None, :], float("-inf"))
        s_own = torch.einsum("bwhtd,bwhsd->bwhts", q, k) * scale  # (B, W, H, t, t)
        s_own = s_own.masked_fill(~torch.ones(t, t, dtype=torch.bool, device=x.device).tril(), float("-inf"))
        probs = torch.softmax(torch.cat([s_prefix, s_own], dim=-1).float(), dim=-1).to(q.dtype)
        n = kp.shape[2]
        y = torch.einsum("bwhts,bhsd->bwhtd", probs[..., :n], vp) + torch.einsum("bwhts,bwhsd->bwhtd", probs[..., n:], v)
        return self._merge(y.reshape(b * w, h, t, hd))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention (decoder only), feed-forward."""

    def __init__(self, cfg: RetrieverConfig, cross: bool):
        super().__init__()
        self.norm_self = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.norm_cross = nn.LayerNorm(cfg.d_model) if cross else None
        self.cross = Attention(cfg) if cross else None
        self.norm_ff = nn.LayerNorm(cfg.d_model)
        self.ff = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.ff_dim), nn.GELU(), Dropout(cfg.dropout), nn.Linear(cfg.ff_dim, cfg.d_model)
        )
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False,
                memory: tuple[Tensor, Tensor] | None = None, memory_mask: Tensor | None = None,
                keep: list | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.norm_self(x), mask=mask, causal=causal, keep=keep))
        if self.cross is not None:
            x = x + self.drop(self.cross.cross(self.norm_cross(x), memory, memory_mask))
        return x + self.drop(self.ff(self.norm_ff(x)))

    def step_with_prefix(self, x: Tensor, prefix: tuple[Tensor, Tensor], valid: Tensor) -> Tensor:
        x = x + self.drop(self.attn.with_prefix(self.norm_self(x), prefix, valid))
        return x + self.drop(self.ff(self.norm_ff(x)))


class Retriever(nn.Module):
    """What every architecture shares; a subclass adds its layers and the three methods beam.py uses.

    Build one from a config with `build_retriever(cfg)`, which picks the class of `cfg.arch`.
    """

    def __init__(self, cfg: RetrieverConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.tokens = nn.Embedding(cfg.vocab_size, d)
        self.slot = nn.Embedding(cfg.positions + 1, d)  # 0..L in an item, L+1 for the user token
        self.position = nn.Embedding(cfg.max_seq_len + 2, d)  # 0..S from the window's start, S+1 user token
        self.drop = Dropout(cfg.dropout)
        self.build_layers(cfg)
        self.norm = nn.LayerNorm(d)
        if cfg.tie_head:  # the code and collision tokens' own input embeddings score them
            self.head_bias = nn.Parameter(torch.zeros(cfg.item_vocab))
        else:
            self.head = nn.Linear(d, cfg.item_vocab)
        sizes = torch.tensor(cfg.level_sizes)
        # token id of local code 0 at each item position, and where each position's logits start in the head
        self.register_buffer("token_offset", SPECIALS + torch.cumsum(sizes, 0) - sizes, persistent=False)
        self.head_offset = [int(x) for x in torch.cumsum(sizes, 0) - sizes]
        # a whole semantic ID as one number: code p weighs the product of the sizes after it
        strides = torch.cat([torch.cumprod(sizes.flip(0), 0).flip(0)[1:], torch.ones(1, dtype=torch.long)])
        self.register_buffer("id_strides", strides, persistent=False)
        if cfg.item_ids:
            self.register_buffer("item_keys", torch.zeros(cfg.item_ids, dtype=torch.long))  # sorted whole IDs
            self.item_embedding = nn.Embedding(cfg.item_ids + 1, d, padding_idx=cfg.item_ids)  # last row: none
        self.trie = None  # with trie_softmax: the catalogue's ItemTrie, which training's softmax is limited to
        self.apply(self._init)
        if cfg.item_ids:
            with torch.no_grad():
                self.item_embedding.weight[cfg.item_ids].zero_()

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def build_layers(self, cfg: RetrieverConfig) -> None:
        """Create the architecture's transformer blocks (called before the output head is made)."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> Output:
        """Teacher-forced logits of every target position and the mean cross-entropy."""
        raise NotImplementedError

    @torch.no_grad()
    def start(self, history: Tensor, user: Tensor) -> Context:
        """Run the history once: what every decoding step of these users attends to."""
        raise NotImplementedError

    @torch.no_grad()
    def step_logits(self, context: Context, prefix: Tensor) -> Tensor:
        """Logits of item position p given W beams per user with p tokens each: (B, W, p) -> (B, W, V_p)."""
        raise NotImplementedError

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- embeddings ------------------------------------------------------------------------------
    def set_items(self, codes: Tensor) -> None:
        """Give each item of `codes` (N, L+1) its ID embedding: row r for the r-th smallest whole ID."""
        keys = self._whole_ids(codes.to(self.id_strides.device)).sort().values
        if len(keys) != self.cfg.item_ids:
            raise ValueError(f"the model has {self.cfg.item_ids} item ID embeddings, got {len(keys)} items")
        if bool((keys[1:] == keys[:-1]).any()):
            raise ValueError("two items share one whole semantic ID")
        self.item_keys.copy_(keys)

    def _whole_ids(self, codes: Tensor) -> Tensor:
        """Codes (..., L+1) -> each item's whole semantic ID as one number (padding, -1, counts as 0)."""
        return (codes.clamp(min=0) * self.id_strides).sum(-1)

    def _item_rows(self, items: Tensor) -> Tensor:
        """(B, n, L+1) items -> (B, n) the row of each one's ID embedding; the empty last row for padding
        and for items without one (tokenized after training)."""
        keys = self._whole_ids(items)
        row = torch.searchsorted(self.item_keys, keys).clamp(max=self.cfg.item_ids - 1)
        known = (self.item_keys[row] == keys) & (items[..., 0] >= 0)
        return torch.where(known, row, self.cfg.item_ids)

    def _item_tokens(self, codes: Tensor) -> Tensor:
        """Level-local codes (..., p) of the first p item positions -> token ids; -1 -> PAD."""
        p = codes.shape[-1]
        return torch.where(codes >= 0, codes + self.token_offset[:p], PAD)

    @staticmethod
    def causal_mask(valid: Tensor) -> Tensor:
        """(B, 1, T, T): attend to earlier real positions; every position also sees itself (no empty rows)."""
        t = valid.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=valid.device).tril()
        eye = torch.eye(t, dtype=torch.bool, device=valid.device)
        return ((causal & valid[:, None, :]) | eye)[:, None]

    def user_tokens(self, user: Tensor) -> Tensor:
        """(B,) user bins, -1 for none -> (B,) token ids of the user token, PAD for none."""
        return torch.where(user >= 0, SPECIALS + self.cfg.item_vocab + user, PAD)

    @staticmethod
    def item_positions(items: Tensor) -> Tensor:
        """(B, n, L+1) left-padded items -> (B, n) each item's position from the window's first real item."""
        real = items[..., 0] >= 0
        return (torch.cumsum(real.long(), 1) - 1).clamp(min=0)

    def _embed_items(self, items: Tensor, user: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[user] + the items' tokens: embeddings (B, T, d), which tokens are real (B, T), and the window
        index of each token's item (B, T), -1 for the user token."""
        b, n, size = items.shape
        dev = items.device
        tokens = self._item_tokens(items).reshape(b, n * size)  # (B, n*(L+1))
        slots = torch.arange(size, device=dev).repeat(n)  # (n*(L+1),)
        positions = self.item_positions(items).repeat_interleave(size, dim=1)  # (B, n*(L+1))
        owner = torch.arange(n, device=dev).repeat_interleave(size).expand(b, -1)  # (B, n*(L+1))
        x = self.tokens(tokens) + self.slot(slots) + self.position(positions)
        if self.cfg.item_ids:
            # an item's ID embedding joins its last token, the one that predicts the next item: a target's
            # own ID is never read before the target is complete
            whole = self.item_embedding(self._item_rows(items))[:, :, None]  # (B, n, 1, d)
            x = x + F.pad(whole, (0, 0, size - 1, 0)).reshape(b, n * size, -1)
        if self.cfg.user_bins:
            user_tokens = self.user_tokens(user)[:, None]  # (B, 1)
            slot, position = (torch.tensor([i], device=dev) for i in (self.cfg.positions, self.cfg.max_seq_len + 1))
            u = self.tokens(user_tokens) + self.slot(slot) + self.position(position)
            x, tokens = torch.cat([u, x], 1), torch.cat([user_tokens, tokens], 1)
            owner = torch.cat([torch.full((b, 1), -1, device=dev), owner], 1)
        return self.drop(x), tokens != PAD, owner

    def _embed_target(self, prefix: Tensor, position: Tensor, bos: bool) -> Tensor:
        """([BOS] +) the first p tokens of the items being generated: (N, p) codes at window positions
        (N,) -> (N, p(+1), d), token j at slot j."""
        tokens = self._item_tokens(prefix)
        if bos:
            tokens = torch.cat([torch.full((len(tokens), 1), BOS, device=tokens.device), tokens], 1)  # (N, p+1)
        slots = torch.arange(tokens.shape[1], device=prefix.device)
        return self.drop(self.tokens(tokens) + self.slot(slots) + self.position(position)[:, None])

    @staticmethod
    def history_length(history: Tensor) -> Tensor:
        """(B, n, L+1) left-padded histories -> (B,) real items: the position of the item generated next."""
        return (history[..., 0] >= 0).sum(1)

    def last_logits(self, y: Tensor, p: int, beams: tuple[int, int]) -> Tensor:
        """Logits of item position p from the last of the hidden states y (B*W, t, d): (B, W, V_p)."""
        return self._position_logits(self.norm(y[:, -1]), p).float().view(*beams, -1)

    def _position_logits(self, h: Tensor, p: int) -> Tensor:
        """Logits over the tokens item position p can take, from hidden states h (..., d)."""
        lo = self.head_offset[p]
        hi = lo + self.cfg.level_sizes[p]
        if self.cfg.tie_head:
            return F.linear(h, self.tokens.weight[SPECIALS + lo : SPECIALS + hi], self.head_bias[lo:hi])
        return F.linear(h, self.head.weight[lo:hi], self.head.bias[lo:hi])

    def use_trie(self, trie) -> None:
        """The catalogue's ItemTrie (semrec.retriever.beam), which a trie_softmax model's loss is limited to."""
        self.trie = trie

    def output(self, h: Tensor, target: Tensor) -> Output:
        """h (M, L+1, d): the hidden state that predicts each token of M targets (M, L+1) -> logits and
        the mean cross-entropy over all their tokens.

        With trie_softmax the tokens that continue no catalogue item after the target's prefix get no
        probability (logit -inf): the loss is then exactly -log p(item) under the distribution over
        items that constrained beam search decodes, summed over its L+1 factors."""
        h = self.norm(h)
        logits = [self._position_logits(h[:, p], p) for p in range(self.cfg.positions)]
        if self.cfg.trie_softmax:
            if self.trie is None:
                raise ValueError("a trie_softmax model needs the catalogue's trie: call use_trie first")
            allowed = self.trie.allowed(target)
            logits = [lg.masked_fill(~ok, float("-inf")) for lg, ok in zip(logits, allowed)]
        smoothing = self.cfg.label_smoothing if self.training else 0.0
        loss = torch.stack([smoothed_cross_entropy(lg.float(), target[:, p], smoothing)
                            for p, lg in enumerate(logits)]).mean()
        return Output(loss, logits)

    # -- checkpoint ------------------------------------------------------------------------------
    def save(self, path: Path, metadata: dict | None = None) -> None:
        """Weights and config in one safetensors file: the model can be rebuilt from it alone."""
        from semrec.io import write_weights

        write_weights(path, self.state_dict(), {"config": asdict(self.cfg), **(metadata or {})})


def smoothed_cross_entropy(logits: Tensor, target: Tensor, smoothing: float) -> Tensor:
    """Mean cross-entropy of logits (M, V) with target (M,), a share `smoothing` of each target's mass
    spread evenly over the tokens whose logit is finite (all of them unless some are ruled out by -inf)."""
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(1, target[:, None])[:, 0]
    if smoothing == 0:
        return nll.mean()
    finite = torch.isfinite(logits)
    spread = -torch.where(finite, logp, 0.0).sum(1) / finite.sum(1)
    return ((1 - smoothing) * nll + smoothing * spread).mean()


def build_retriever(cfg: RetrieverConfig, item_codes: Tensor | None = None) -> Retriever:
    """An untrained model of the architecture `cfg.arch` (looked up in the registry); with `cfg.item_ids`,
    `item_codes` (N, L+1) are the items that get ID embeddings."""
    model = ARCHITECTURES[cfg.arch].load()(cfg)
    if cfg.item_ids:
        if item_codes is None:
            raise ValueError("a model with item ID embeddings needs the items' codes")
        model.set_items(item_codes)
    return model
