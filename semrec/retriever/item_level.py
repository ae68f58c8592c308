"""One position per item: a causal stack over whole items, and a short decoder that spells the next one.

The token-level architectures attend over every code token of the history (L+1 per item); this one,
like SASRec, reads each history item as one vector: the sum of its L+1 token embeddings (and of its
ID embedding with `item_ids`) plus its position. Its encoder_layers blocks run causally over
[user, item_1 ... item_n], so the state of item t sums up the history up to t. The next item's
tokens are then written by decoder_layers small blocks over [state_t, code_1, ..., code_L] alone
(causal within the item): the state predicts the first code and each code the next. The stack is
(L+1)x shorter than the decoder-only one, so depth and width cost a fraction of theirs, and the
spelling head sees nothing of the history but the state, the single vector SASRec scores items by.

For decoding, `start` runs the stack once per user and keeps the last state; each beam step runs
the spelling head over the state and the beam's few tokens.
"""

import torch
from torch import Tensor, nn

from semrec.retriever.model import Batch, Block, Context, Output, Retriever, RetrieverConfig


class ItemLevel(Retriever):
    def build_layers(self, cfg: RetrieverConfig) -> None:
        if cfg.encoder_layers < 1:
            raise ValueError("the item-level retriever needs at least one encoder layer (its item stack)")
        self.stack = nn.ModuleList(Block(cfg, cross=False) for _ in range(cfg.encoder_layers))
        self.state_norm = nn.LayerNorm(cfg.d_model)
        self.speller = nn.ModuleList(Block(cfg, cross=False) for _ in range(cfg.decoder_layers))

    def _embed_whole_items(self, items: Tensor, user: Tensor) -> tuple[Tensor, Tensor]:
        """[user] + one vector per item (B, u+n, d) and which of them are real (B, u+n)."""
        real = items[..., 0] >= 0  # (B, n)
        x = self.tokens(self._item_tokens(items)).sum(2) + self.position(self.item_positions(items))
        if self.cfg.item_ids:
            x = x + self.item_embedding(self._item_rows(items))
        if self.cfg.user_bins:
            u = self.tokens(self.user_tokens(user)) + self.position.weight[self.cfg.max_seq_len + 1]
            x, real = torch.cat([u[:, None], x], 1), torch.cat([(user >= 0)[:, None], real], 1)
        return self.drop(x), real

    def _states(self, items: Tensor, user: Tensor) -> Tensor:
        """(B, u+n, d): the normalised state of the user token and of each item, each seeing only earlier ones."""
        x, real = self._embed_whole_items(items, user)
        mask = self.causal_mask(real)
        for block in self.stack:
            x = block(x, mask=mask)
        return self.state_norm(x)

    def _spell(self, state: Tensor, prefix: Tensor) -> Tensor:
        """Hidden states (N, p+1, d) of [state, the first p tokens of the item] (N, d), (N, p): position j
        predicts the item's token j."""
        tokens = self.tokens(self._item_tokens(prefix)) + self.slot(torch.arange(prefix.shape[1], device=prefix.device))
        y = torch.cat([state[:, None], self.drop(tokens)], 1)
        for block in self.speller:
            y = block(y, causal=True)
        return y

    def forward(self, batch: Batch) -> Output:
        """Teacher-forced logits of every token of every target and their mean cross-entropy."""
        items = batch.items
        h = self._states(items, batch.user)
        u = h.shape[1] - items.shape[1]  # 1 with a user token, else 0
        # item t is predicted from the state just before it: item t-1's, or the user token's for t = 0
        before = torch.cat([torch.zeros_like(h[:, :1]), h], 1)[:, u : u + items.shape[1]]
        target = items[batch.targets]  # (M, L+1)
        return self.output(self._spell(before[batch.targets], target[:, :-1]), target)

    @torch.no_grad()
    def start(self, history: Tensor, user: Tensor) -> Context:
        h = self._states(history, user)
        return Context([], history[..., 0] >= 0, position=self.history_length(history), last=h[:, -1])

    @torch.no_grad()
    def step_logits(self, context: Context, prefix: Tensor) -> Tensor:
        b, w, p = prefix.shape
        y = self._spell(context.last.repeat_interleave(w, 0), prefix.reshape(b * w, p))
        return self.last_logits(y, p, (b, w))
