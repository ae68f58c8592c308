"""One causal stack over [user, history, BOS, target]: the decoder-only retriever.

Its encoder_layers + decoder_layers blocks give a parameter count comparable to the
encoder-decoder. For decoding, `start` runs the history once and keeps every layer's keys and
values; each beam step attends to them and to its own earlier target tokens, without copying the
history per beam.
"""

import torch
from torch import Tensor, nn

from semrec.retriever.model import Batch, Block, Context, Output, Retriever, RetrieverConfig


class DecoderOnly(Retriever):
    def build_layers(self, cfg: RetrieverConfig) -> None:
        self.decoder = nn.ModuleList(Block(cfg, cross=False) for _ in range(cfg.encoder_layers + cfg.decoder_layers))

    def forward(self, batch: Batch) -> Output:
        """Teacher-forced logits of every target position and the mean cross-entropy."""
        y = self._embed_target(batch.target[:, : self.cfg.levels])  # (B, L+1, d)
        x, valid = self._embed_history(batch.history, batch.user, eos=False)
        seq = torch.cat([x, y], 1)  # (B, T + L+1, d)
        h = self._causal_stack(seq, torch.cat([valid, torch.ones_like(valid[:, : y.shape[1]])], 1))
        return self.output(h[:, x.shape[1]:], batch.target)  # the target's L+1 positions

    @staticmethod
    def _causal_mask(valid: Tensor) -> Tensor:
        """(B, 1, T, T): attend to earlier real tokens; every token also sees itself (no empty rows)."""
        t = valid.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=valid.device).tril()
        eye = torch.eye(t, dtype=torch.bool, device=valid.device)
        return ((causal & valid[:, None, :]) | eye)[:, None]

    def _causal_stack(self, x: Tensor, valid: Tensor, keep: list | None = None) -> Tensor:
        mask = self._causal_mask(valid)
        for block in self.decoder:
            x = block(x, mask=mask, keep=keep)
        return x

    @torch.no_grad()
    def start(self, history: Tensor, user: Tensor) -> Context:
        x, valid = self._embed_history(history, user, eos=False)
        kv: list = []
        self._causal_stack(x, valid, keep=kv)
        return Context(kv, valid)

    @torch.no_grad()
    def step_logits(self, context: Context, prefix: Tensor) -> Tensor:
        b, w, p = prefix.shape
        y = self._embed_target(prefix.reshape(b * w, p))  # (B*W, p+1, d)
        for block, prefix_kv in zip(self.decoder, context.kv):
            y = block.step_with_prefix(y, prefix_kv, context.valid)
        h = self.norm(y[:, -1])  # (B*W, d)
        return self._position_logits(h, p).float().view(b, w, -1)
