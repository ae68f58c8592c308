"""TIGER's encoder-decoder: the encoder reads [user, items], the decoder writes each target item.

The encoder is causal at the item level: a token of item t sees the user token and every token of
items 1..t, so one pass serves every target of a window (TIGER's encoder is bidirectional over the
history; in "prefix" training, too, the encoder here is item-causal, so both modes train the same
model). The decoder generates item t+1's L+1 tokens after BOS with causal self-attention within
the item and cross-attention to the encoder tokens of items 1..t (and the user); all targets of a
window are decoded in one batch, each a short sequence of its own whose memory is folded into
the query axis, as the beams of a user are in decoding. For decoding, `start` encodes each user's
history once and projects the memory into every decoder layer's cross-attention keys and values;
each beam step then runs only the few target tokens.
"""

import torch
from torch import Tensor, nn

from semrec.retriever.model import Batch, Block, Context, Output, Retriever, RetrieverConfig


class EncoderDecoder(Retriever):
    def build_layers(self, cfg: RetrieverConfig) -> None:
        if cfg.encoder_layers < 1:
            raise ValueError("the encoder-decoder needs at least one encoder layer")
        self.encoder = nn.ModuleList(Block(cfg, cross=False) for _ in range(cfg.encoder_layers))
        self.encoder_norm = nn.LayerNorm(cfg.d_model)
        self.decoder = nn.ModuleList(Block(cfg, cross=True) for _ in range(cfg.decoder_layers))

    def _encode(self, items: Tensor, user: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Memory (B, T, d) of [user, items] under the item-causal mask, which tokens are real, their items."""
        x, valid, owner = self._embed_items(items, user)
        t = x.shape[1]
        sees = (owner[:, None, :] <= owner[:, :, None]) & valid[:, None, :]  # (B, T, T) query x key
        mask = (sees | torch.eye(t, dtype=torch.bool, device=x.device))[:, None]  # no empty rows
        for block in self.encoder:
            x = block(x, mask=mask)
        return self.encoder_norm(x), valid, owner

    def forward(self, batch: Batch) -> Output:
        """Teacher-forced logits of every token of every target and their mean cross-entropy."""
        items, targets = batch.items, batch.targets
        b, n, size = items.shape
        memory, valid, owner = self._encode(items, batch.user)
        first = int(targets.any(0).nonzero()[0])  # items before the first target column are never decoded
        m = n - first
        decoded = items[:, first:]  # (B, m, L+1)
        position = self.item_positions(items)[:, first:]  # (B, m)
        # each decoded item is a sequence of its own, [BOS, codes]; its memory is folded into the query
        # axis of the cross-attention like the beams of a user in decoding
        y = self._embed_target(decoded[..., :-1].reshape(b * m, size - 1), position.reshape(-1), bos=True)
        item_of = (first + torch.arange(m, device=items.device)).repeat_interleave(size)  # (m*(L+1),)
        chosen = targets[:, first:]  # (B, m)
        earlier = owner[:, None, :] < item_of[None, :, None]  # (B, m*(L+1), T): memory of the items before
        # a target sees the memory of the items before it; the other items (padding, discarded) see all of
        # it, so that no query row is empty
        sees = (earlier | ~chosen.repeat_interleave(size, 1)[:, :, None]) & valid[:, None, :]
        for block in self.decoder:
            y = block(y, causal=True, memory=block.cross.project_kv(memory), memory_mask=sees[:, None])
        return self.output(y.view(b, m, size, -1)[chosen], decoded[chosen])

    @torch.no_grad()
    def start(self, history: Tensor, user: Tensor) -> Context:
        memory, valid, _ = self._encode(history, user)
        kv = [block.cross.project_kv(memory) for block in self.decoder]
        return Context(kv, valid, position=self.history_length(history))

    @torch.no_grad()
    def step_logits(self, context: Context, prefix: Tensor) -> Tensor:
        b, w, p = prefix.shape
        y = self._embed_target(prefix.reshape(b * w, p), context.position.repeat_interleave(w), bos=True)
        mask = context.valid[:, None, None, :]  # (B, 1, 1, T): the whole history
        for block, memory in zip(self.decoder, context.kv):
            y = block(y, causal=True, memory=memory, memory_mask=mask)
        return self.last_logits(y, p, (b, w))
