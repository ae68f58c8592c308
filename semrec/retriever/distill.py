"""Learning from SASRec's ranking: a soft target for every code of every training target.

With retriever.distill_weight = w > 0 the loss of each of a target item's L+1 tokens is

    (1 - w) * -log p(c_p | h, c_<p)  +  w * sum_c q_p(c) * -log p(c | h, c_<p),

    q_p(c) = sum of P_T(i) over items i whose ID starts c_<p, c  /  sum of P_T(i) over items that start c_<p,

where P_T = softmax over the catalogue of the workspace's trained SASRec (`semrec fit-baseline`) fed the
same window, and c_<p is the target's true prefix. The q_p of an item's tokens multiply to P_T(item):
the retriever is taught, in the factorised form its beam search decodes, the item distribution of a
model whose full softmax over item IDs ranks better than it on its own. Only training reads the
teacher; validation, its loss and decoding are the retriever's alone.
"""

import torch
from torch import Tensor

from semrec.baselines.sasrec import SASRec
from semrec.retriever.beam import ItemTrie
from semrec.retriever.model import Batch


class Teacher:
    """SASRec's next-item distribution, spread over the code positions of each target's semantic ID.

    The items are ranked by their semantic IDs in lexicographic order, so that the items under any
    prefix of the trie form one run of that order: the teacher's mass under every prefix is then a
    difference of two entries of the cumulative sum of its item probabilities, and a target's soft
    targets cost a gather per code position instead of a pass over the catalogue per position.
    """

    def __init__(self, sasrec: SASRec, trie: ItemTrie, codes: Tensor):
        """codes: (N, L+1) level-local codes of item ids 0..N-1 (the items the trie's last table names)."""
        if sasrec.cfg.n_items > len(codes):
            raise ValueError(f"the teacher knows {sasrec.cfg.n_items} items, the semantic IDs only {len(codes)}")
        self.sasrec, self.trie = sasrec.eval(), trie
        device = trie.tables[0].device
        codes = codes.to(device)
        _, place = torch.unique(codes, dim=0, return_inverse=True)  # each item's place in lexicographic order
        self.order = torch.argsort(place)  # the item at each place of the order
        self.runs = []  # per position p: first place and one past the last of the items under each state
        state = torch.zeros(len(codes), dtype=torch.long, device=device)
        for p, table in enumerate(trie.tables):
            state = table[state, codes[:, p]]  # each item's prefix of p + 1 tokens (its item id at the end)
            n = int(table.max()) + 1
            first = torch.full((n,), len(codes), device=device).scatter_reduce(0, state, place, "amin")
            after = torch.zeros(n, dtype=torch.long, device=device).scatter_reduce(0, state, place + 1, "amax")
            self.runs.append((first, after))

    def item_ids(self, items: Tensor) -> Tensor:
        """(B, n, L+1) codes, padding -1 -> (B, n) item ids, -1 for padding (walked down the trie)."""
        real = items[..., 0] >= 0
        state = torch.zeros(items.shape[:2], dtype=torch.long, device=items.device)
        for p, table in enumerate(self.trie.tables):
            state = table[state.clamp(min=0), items[..., p].clamp(min=0)]
        return torch.where(real, state, -1)

    @torch.no_grad()
    def item_probabilities(self, batch: Batch) -> Tensor:
        """(M, N): P_T(item | the window's items before each target), targets in batch.targets order."""
        if bool(batch.targets[:, 0].any()):
            raise ValueError("a target has no item before it in its window: the teacher needs a history")
        states = self.sasrec.hidden(self.item_ids(batch.items))
        before = torch.cat([torch.zeros_like(states[:, :1]), states[:, :-1]], 1)[batch.targets]  # (M, d)
        known = self.sasrec.cfg.n_items
        probs = torch.zeros(len(before), len(self.order), device=before.device)
        probs[:, :known] = torch.softmax(self.sasrec.scores(before).float(), -1)
        return probs

    @torch.no_grad()
    def soft_targets(self, batch: Batch) -> list[Tensor]:
        """Per item position p, q_p (M, V_p): the teacher's distribution over token p of each target given
        its true first p tokens."""
        probs = self.item_probabilities(batch)[:, self.order].double()
        below = torch.cat([torch.zeros_like(probs[:, :1]), probs.cumsum(1)], 1)  # (M, N+1): mass before each place
        target = batch.items[batch.targets]  # (M, L+1)
        state = torch.zeros(len(target), dtype=torch.long, device=target.device)
        soft = []
        for p, (table, (first, after)) in enumerate(zip(self.trie.tables, self.runs)):
            child = table[state]  # (M, V_p): the state each token leads to, -1 where no item does
            known = child.clamp(min=0)
            mass = (below.gather(1, after[known]) - below.gather(1, first[known])).clamp(min=0)
            mass = torch.where(child >= 0, mass, 0.0)
            soft.append((mass / mass.sum(1, keepdim=True).clamp(min=1e-300)).float())
            state = child.gather(1, target[:, p : p + 1])[:, 0]
        return soft


def soft_cross_entropy(logits: list[Tensor], soft: list[Tensor]) -> Tensor:
    """Mean over targets and positions of -sum_c q(c) log p(c); tokens q gives no mass (and a trie
    softmax's -inf logits) count nothing."""
    losses = []
    for lg, q in zip(logits, soft):
        logp = torch.log_softmax(lg.float(), -1)
        losses.append(-torch.where(q > 0, q * logp, 0.0).sum(-1).mean())
    return torch.stack(losses).mean()
