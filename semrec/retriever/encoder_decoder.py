"""TIGER's encoder-decoder: the encoder reads [user, history, EOS], the decoder writes the next item.

The decoder generates the item's L+1 tokens after BOS with causal self-attention and
cross-attention to the encoder memory. For decoding, `start` encodes each user's history once and
projects the memory into every decoder layer's cross-attention keys and values; each beam step
then runs only the few target tokens.
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

    def forward(self, batch: Batch) -> Output:
        """Teacher-forced logits of every target position and the mean cross-entropy."""
        y = self._embed_target(batch.target[:, : self.cfg.levels])  # (B, L+1, d)
        x, valid = self._embed_history(batch.history, batch.user, eos=True)
        memory = self._encode(x, valid)
        for block in self.decoder:
            y = block(y, causal=True, memory=block.cross.project_kv(memory), memory_valid=valid)
        return self.output(y, batch.target)

    def _encode(self, x: Tensor, valid: Tensor) -> Tensor:
        mask = valid[:, None, None, :]  # (B, 1, 1, T): padding is never attended to
        for block in self.encoder:
            x = block(x, mask=mask)
        return self.encoder_norm(x)

    @torch.no_grad()
    def start(self, history: Tensor, user: Tensor) -> Context:
        x, valid = self._embed_history(history, user, eos=True)
        memory = self._encode(x, valid)
        return Context([block.cross.project_kv(memory) for block in self.decoder], valid)

    @torch.no_grad()
    def step_logits(self, context: Context, prefix: Tensor) -> Tensor:
        b, w, p = prefix.shape
        y = self._embed_target(prefix.reshape(b * w, p))  # (B*W, p+1, d)
        for block, memory in zip(self.decoder, context.kv):
            y = block(y, causal=True, memory=memory, memory_valid=context.valid)
        h = self.norm(y[:, -1])  # (B*W, d)
        return self._position_logits(h, p).float().view(b, w, -1)
