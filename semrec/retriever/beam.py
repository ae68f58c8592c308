"""Constrained beam search: generate the semantic IDs of real items only, deterministically, on the device.

The valid IDs form a trie over the L+1 item positions. It is held as one dense transition table per
position: `tables[p][state, token]` is the state reached by appending `token` to the prefix
`state` (a prefix of p tokens, numbered 0..n_p-1), or -1 when no item starts that way; the last
table maps straight to item ids. A beam step is then a gather, a mask and one top-k per batch of
users, with no Python loop over beams or users.

Scores are sums of the model's log-probabilities of each token over its position's vocabulary (not
renormalised over the valid tokens; with a trie_softmax model, over the valid tokens only, as it was
trained), so a beam wide enough to hold every prefix returns exactly the K items of highest sequence
log-likelihood.
"""

from typing import NamedTuple

import torch
from torch import Tensor

from semrec.errors import SemrecError


class ItemTrie:
    """The valid semantic IDs of a catalogue as per-position transition tables (see the module doc)."""

    def __init__(self, codes: Tensor, items: Tensor, level_sizes: list[int], device: torch.device | str = "cpu"):
        """codes: (M, L+1) level-local codes of the decodable items; items: (M,) their item ids."""
        if codes.shape[0] == 0:
            raise SemrecError("no item can be decoded: the catalogue is empty")
        codes, items = codes.long().cpu(), items.long().cpu()
        if len(torch.unique(codes, dim=0)) != len(codes):
            raise SemrecError("two items share a whole semantic ID (codes and collision token)",
                              "run `semrec tokenize --force`: the collision token must make every ID unique")
        self.tables: list[Tensor] = []
        parent = torch.zeros(len(codes), dtype=torch.long)  # every item starts at the root, state 0
        for p, size in enumerate(level_sizes):
            if p + 1 < len(level_sizes):
                _, child = torch.unique(codes[:, : p + 1], dim=0, return_inverse=True)
            else:
                child = items
            n_states = int(parent.max()) + 1
            table = torch.full((n_states, size), -1, dtype=torch.long)
            table[parent, codes[:, p]] = child
            self.tables.append(table.to(device))
            parent = child
        self.size = len(codes)

    def walk(self, codes: Tensor) -> Tensor:
        """Codes (M, L+1) -> the state (M, L+1) each ID reaches after each of its tokens: after the last,
        its item id; -1 from where it leaves the trie."""
        state = torch.zeros(len(codes), dtype=torch.long, device=codes.device)
        states = []
        for p, table in enumerate(self.tables):
            state = torch.where(state >= 0, table[state.clamp(min=0), codes[:, p]], -1)
            states.append(state)
        return torch.stack(states, 1)

    def allowed(self, codes: Tensor) -> list[Tensor]:
        """Codes (M, L+1) of catalogue items -> per position p, (M, V_p) bool: the tokens that continue
        each item's first p tokens to some catalogue item."""
        states = self.walk(codes)
        if bool((states[:, -1] < 0).any()):
            raise ValueError("a target's semantic ID is not in the trie: it is no item of the catalogue")
        parents = torch.cat([torch.zeros_like(states[:, :1]), states[:, :-1]], 1)
        return [table[parents[:, p]] >= 0 for p, table in enumerate(self.tables)]


class Ranked(NamedTuple):
    items: Tensor  # (B, k) item ids, best first
    scores: Tensor  # (B, k) summed log-probabilities


def check_request(k: int, beam_size: int, catalogue: int) -> None:
    if k < 1:
        raise SemrecError(f"K = {k}: ask for at least one item")
    if k > catalogue:
        raise SemrecError(f"K = {k} is larger than the catalogue ({catalogue} items that can be recommended)",
                          f"ask for at most {catalogue}")
    if beam_size < k:
        raise SemrecError(f"the beam ({beam_size}) is smaller than K = {k}: beam search keeps only {beam_size} items",
                          f"set eval.beam_size to at least {k}")


@torch.no_grad()
def beam_search(model, trie: ItemTrie, history: Tensor, user: Tensor, k: int, beam_size: int,
                exclude: Tensor | None = None) -> Ranked:
    """The top-k distinct real items for each user by beam search over the L+1 item positions.

    history: (B, n, L+1) level-local codes, left-padded with -1; user: (B,) user bins (-1 = none);
    exclude: optional (B, n_items) bool, items that may not be returned (they die at the last step).
    """
    check_request(k, beam_size, trie.size)
    if history.shape[1] == 0 or bool((history[:, -1, 0] < 0).any()):
        raise SemrecError("a history is empty: the retriever needs at least one item to go on",
                          "give at least one item the user interacted with")
    context = model.start(history, user)
    b = history.shape[0]
    device = history.device
    scores = torch.zeros(b, 1, device=device)  # (B, w): one beam, the empty prefix
    states = torch.zeros(b, 1, dtype=torch.long, device=device)
    prefix = torch.zeros(b, 1, 0, dtype=torch.long, device=device)  # (B, w, p)
    last = len(trie.tables) - 1
    for p, table in enumerate(trie.tables):
        nxt = table[states.clamp(min=0)]  # (B, w, V_p)
        in_trie = nxt >= 0
        logits = model.step_logits(context, prefix)  # (B, w, V_p)
        if model.cfg.trie_softmax:
            logits = logits.masked_fill(~in_trie, float("-inf"))
        logp = torch.log_softmax(logits, dim=-1)
        allowed = in_trie & (states >= 0)[..., None]
        if p == last and exclude is not None:
            allowed &= ~exclude.gather(1, nxt.clamp(min=0).flatten(1)).view_as(nxt)
        cand = torch.where(allowed, scores[..., None] + logp, float("-inf")).flatten(1)  # (B, w*V_p)
        width = min(beam_size, cand.shape[1])
        scores, flat = cand.topk(width, dim=1)  # (B, w'), sorted best first
        size = table.shape[1]
        beam, token = flat // size, flat % size
        states = torch.where(torch.isfinite(scores), nxt.flatten(1).gather(1, flat), -1)
        prefix = torch.cat([prefix.gather(1, beam[..., None].expand(-1, -1, p)), token[..., None]], dim=2)
    return Ranked(states[:, :k], scores[:, :k])
