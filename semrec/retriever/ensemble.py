"""Several retrievers trained from different seeds, ranking as one: a product of experts.

At every beam step the ensemble's log-probability of a token is the mean of its members':

    log p(token | history, prefix) = mean_m log p_m(token | history, prefix) - log Z,

Z renormalising over the position's tokens (beam.py's log-softmax; with trie_softmax over the valid
ones, which gives the same as renormalising each member first, since a log-softmax only shifts a
row by a constant). An item's score is then the mean of its members' log-likelihoods up to the
per-step normalisers. Members of one architecture and size that differ only in their seed make
different mistakes on the items they rank at the top, and the geometric mean keeps the items all of
them rank high: on Beauty's validation split four item-level members ranked 8% better by NDCG@10
than one (bench/RESULTS.md). Ranking costs one member's time per member.

The ensemble offers what beam.py and rank.py use of a model (`cfg`, `start`, `step_logits`,
train/eval mode) and is saved to one file, every member's weights under its index.
"""

from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from semrec.retriever.model import Context, Retriever, RetrieverConfig


class Ensemble(nn.Module):
    def __init__(self, members: list[Retriever]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if any(m.cfg != members[0].cfg for m in members):
            raise ValueError("the members of an ensemble must share one config")
        self.members = nn.ModuleList(members)

    @property
    def cfg(self) -> RetrieverConfig:
        return self.members[0].cfg

    def num_params(self) -> int:
        return sum(m.num_params() for m in self.members)

    def use_trie(self, trie) -> None:
        for member in self.members:
            member.use_trie(trie)

    @torch.no_grad()
    def start(self, history: Tensor, user: Tensor) -> list[Context]:
        return [member.start(history, user) for member in self.members]

    @torch.no_grad()
    def step_logits(self, context: list[Context], prefix: Tensor) -> Tensor:
        """The mean of the members' log-probabilities (B, W, V_p): logits of their normalised product."""
        logp = [torch.log_softmax(m.step_logits(c, prefix), dim=-1) for m, c in zip(self.members, context)]
        return torch.stack(logp).mean(0)

    def save(self, path: Path, metadata: dict | None = None) -> None:
        from semrec.io import write_weights

        write_weights(path, self.state_dict(), {"config": asdict(self.cfg), "members": len(self.members),
                                                **(metadata or {})})
