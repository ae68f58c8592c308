"""One causal stack over [user, item_1 ... item_n]: the decoder-only retriever.

It reads the items' tokens as one stream: the hidden state of each token predicts the next one,
so the last token of item t predicts the first code of item t+1 and each code of item t+1 predicts
the following one. One pass over a window therefore serves every target in it. Its
encoder_layers + decoder_layers blocks give a parameter count comparable to the encoder-decoder.
For decoding, `start` runs the history once and keeps every layer's keys and values and the last
token's hidden state (which gives the first code's logits); each further beam step attends to
them and to its own earlier tokens, without copying the history per beam.
"""

import torch
from torch import Tensor, nn

from semrec.retriever.model import Batch, Block, Context, Output, Retriever, RetrieverConfig


class DecoderOnly(Retriever):
    def build_layers(self, cfg: RetrieverConfig) -> None:
        self.decoder = nn.ModuleList(Block(cfg, cross=False) for _ in range(cfg.encoder_layers + cfg.decoder_layers))

    def _causal_stack(self, x: Tensor, valid: Tensor, keep: list | None = None) -> Tensor:
        mask = self.causal_mask(valid)
        for block in self.decoder:
            x = block(x, mask=mask, keep=keep)
        return x

    def forward(self, batch: Batch) -> Output:
        """Teacher-forced logits of every token of every target and their mean cross-entropy."""
        items = batch.items
        b, n, size = items.shape
        x, valid, _ = self._embed_items(items, batch.user)
        h = self._causal_stack(x, valid)  # (B, u + n*(L+1), d)
        u = h.shape[1] - n * size  # 1 with a user token, else 0
        # the state that predicts token j of the items is the one just before it (j - 1; for j = 0 with
        # no user token there is none, and the first item is never a target)
        before = torch.cat([torch.zeros_like(h[:, :1]), h], 1)[:, u : u + n * size]
        return self.output(before.view(b, n, size, -1)[batch.targets], items[batch.targets])

    @torch.no_grad()
    def start(self, history: Tensor, user: Tensor) -> Context:
        x, valid, _ = self._embed_items(history, user)
        kv: list = []
        h = self._causal_stack(x, valid, keep=kv)
        return Context(kv, valid, position=self.history_length(history), last=h[:, -1])

    @torch.no_grad()
    def step_logits(self, context: Context, prefix: Tensor) -> Tensor:
        b, w, p = prefix.shape
        if p == 0:
            return self._position_logits(self.norm(context.last), 0).float()[:, None].expand(b, w, -1)
        y = self._embed_target(prefix.reshape(b * w, p), context.position.repeat_interleave(w), bos=False)
        for block, prefix_kv in zip(self.decoder, context.kv):
            y = block.step_with_prefix(y, prefix_kv, context.valid)
        return self.last_logits(y, p, (b, w))
