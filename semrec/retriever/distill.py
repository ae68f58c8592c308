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

from collections.abc import Callable

import torch
from torch import Tensor

from semrec.baselines.sasrec import SASRec
from semrec.retriever.beam import ItemTrie
from semrec.retriever.data import Batches
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
        states = trie.walk(codes)  # each item's prefix of p + 1 tokens (its item id at the end)
        for state, table in zip(states.T, trie.tables):
            n = int(table.max()) + 1
            first = torch.full((n,), len(codes), device=device).scatter_reduce(0, state, place, "amin")
            after = torch.zeros(n, dtype=torch.long, device=device).scatter_reduce(0, state, place + 1, "amax")
            self.runs.append((first, after))

    def item_ids(self, items: Tensor) -> Tensor:
        """(B, n, L+1) codes, padding -1 -> (B, n) item ids, -1 for padding (walked down the trie)."""
        item = self.trie.walk(items.clamp(min=0).flatten(0, 1))[:, -1].view(items.shape[:2])
        return torch.where(items[..., 0] >= 0, item, -1)

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
        states = self.trie.walk(batch.items[batch.targets])  # (M, L+1): each target's prefixes
        parents = torch.cat([torch.zeros_like(states[:, :1]), states[:, :-1]], 1)
        soft = []
        for parent, table, (first, after) in zip(parents.T, self.trie.tables, self.runs):
            child = table[parent]  # (M, V_p): the state each token leads to, -1 where no item does
            known = child.clamp(min=0)
            mass = (below.gather(1, after[known]) - below.gather(1, first[known])).clamp(min=0)
            mass = torch.where(child >= 0, mass, 0.0)
            soft.append((mass / mass.sum(1, keepdim=True).clamp(min=1e-300)).float())
        return soft


SOFT_TARGET_TABLE_BYTES = 2 * 1024**3
"""The largest SoftTargetTable kept (Beauty's is 0.5 GB); above it the teacher runs at every step."""


def soft_target_source(teacher: Teacher, batches: Batches) -> Callable[[Batch], list[Tensor]]:
    """What gives a training piece its soft targets: the table when it fits, else the teacher itself."""
    if SoftTargetTable.bytes_needed(teacher, batches) <= SOFT_TARGET_TABLE_BYTES:
        return SoftTargetTable(teacher, batches)
    return teacher.soft_targets


class SoftTargetTable:
    """Every training target's soft targets, computed once before training and looked up at each step.

    The teacher is fixed and so is each target's window (semrec.retriever.data: every target belongs
    to one window), so the soft targets of a target are the same in every epoch: computing them once
    saves the teacher's pass over the catalogue at every step, which cost 1.5 times the retriever's own
    step on Beauty. Rows are the targets' places in the packed training items (Batch.source).
    """

    def __init__(self, teacher: Teacher, batches: Batches, chunk: int = 512):
        sequences = batches.sequences
        device = batches.device
        widths = [table.shape[1] for table in teacher.trie.tables]
        self.levels = [torch.zeros(len(sequences.flat), width, device=device) for width in widths]
        for start in range(0, len(sequences), chunk):
            for piece in batches.training(torch.arange(start, min(start + chunk, len(sequences))), step=0):
                rows = piece.source[piece.targets]
                for level, q in zip(self.levels, teacher.soft_targets(piece)):
                    level[rows] = q

    @staticmethod
    def bytes_needed(teacher: Teacher, batches: Batches) -> int:
        return 4 * len(batches.sequences.flat) * sum(table.shape[1] for table in teacher.trie.tables)

    def __call__(self, batch: Batch) -> list[Tensor]:
        """Per item position p, q_p (M, V_p) of the batch's targets, as Teacher.soft_targets gives them."""
        rows = batch.source[batch.targets]
        return [level[rows] for level in self.levels]


def soft_cross_entropy(logits: list[Tensor], soft: list[Tensor]) -> Tensor:
    """Mean over targets and positions of -sum_c q(c) log p(c); tokens q gives no mass (and a trie
    softmax's -inf logits) count nothing."""
    losses = []
    for lg, q in zip(logits, soft):
        logp = torch.log_softmax(lg.float(), -1)
        losses.append(-torch.where(q > 0, q * logp, 0.0).sum(-1).mean())
    return torch.stack(losses).mean()
