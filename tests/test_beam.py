"""Constrained beam search: exact where the beam holds every prefix, only real items always, clear errors."""

import pytest
import torch

from semrec.errors import SemrecError
from semrec.retriever.beam import ItemTrie, beam_search
from semrec.retriever.model import Batch, Retriever, RetrieverConfig, build_retriever

ARCHS = ["encoder-decoder", "decoder-only", "item-level"]


def catalogue(n: int, levels: int = 2, size: int = 4, seed: int = 0) -> torch.Tensor:
    """n distinct semantic IDs (codes + collision token numbered within each code tuple), item i = row i."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, size, (n, levels), generator=g)
    dedup = torch.zeros(n, dtype=torch.long)
    seen: dict[tuple, int] = {}
    for i, row in enumerate(map(tuple, codes.tolist())):
        dedup[i] = seen.get(row, 0)
        seen[row] = dedup[i].item() + 1
    return torch.cat([codes, dedup[:, None]], 1)


def tiny_model(arch: str, ids: torch.Tensor, size: int = 4, item_ids: bool = False,
               trie_softmax: bool = False, seed: int = 0) -> Retriever:
    torch.manual_seed(seed)
    cfg = RetrieverConfig(arch=arch, levels=ids.shape[1] - 1, codebook_size=size,
                          collision_size=int(ids[:, -1].max()) + 1, user_bins=3, max_seq_len=3, d_model=16, heads=2,
                          head_dim=8, encoder_layers=1, decoder_layers=1, ff_dim=32, dropout=0.0,
                          item_ids=len(ids) if item_ids else 0, trie_softmax=trie_softmax)
    model = build_retriever(cfg, ids).eval()
    if trie_softmax:
        model.use_trie(ItemTrie(ids, torch.arange(len(ids)), cfg.level_sizes))
    with torch.no_grad():  # sharper than the initialisation, so that the ranking is not a near tie
        model.head.weight.mul_(40)
        if item_ids:
            model.item_embedding.weight.mul_(40)
    return model


def histories(ids: torch.Tensor, b: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    items = torch.randint(0, len(ids), (b, 3), generator=g)
    items[0, 0] = -1  # a shorter history, left-padded
    history = torch.where(items[..., None] >= 0, ids[items.clamp(min=0)], -1)
    return history, torch.tensor([0, 1, -1, 2])[:b]


def teacher_forced_logits(model: Retriever, ids: torch.Tensor, history: torch.Tensor,
                          user: torch.Tensor) -> list[torch.Tensor]:
    """Per item position p, the logits (B*N, V_p) of every item after every user's history."""
    b, n = len(history), len(ids)
    items = torch.cat([history.repeat_interleave(n, 0), ids.repeat(b, 1)[:, None]], 1)  # each item after each history
    targets = torch.zeros(items.shape[:2], dtype=torch.bool)
    targets[:, -1] = True
    with torch.no_grad():
        return model(Batch(items, user.repeat_interleave(n), targets)).logits


def item_scores(logits: list[torch.Tensor], ids: torch.Tensor, users: int) -> torch.Tensor:
    """Summed log-softmax of each item's own tokens: (B, N)."""
    target = ids.repeat(users, 1)
    logp = torch.stack([torch.log_softmax(lg, -1).gather(1, target[:, p:p + 1])[:, 0] for p, lg in enumerate(logits)])
    return logp.sum(0).view(users, len(ids))


def exhaustive_scores(model: Retriever, ids: torch.Tensor, history: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
    """Every item's log-likelihood for every user, by teacher forcing: (B, N)."""
    return item_scores(teacher_forced_logits(model, ids, history, user), ids, len(history))


@pytest.mark.parametrize("item_ids, trie_softmax", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("arch", ARCHS)
def test_beam_search_equals_exhaustive_search_on_tiny_model(arch, item_ids, trie_softmax):
    ids = catalogue(40)
    model = tiny_model(arch, ids, item_ids=item_ids, trie_softmax=trie_softmax)
    trie = ItemTrie(ids, torch.arange(len(ids)), model.cfg.level_sizes)
    history, user = histories(ids)
    ranked = beam_search(model, trie, history, user, k=10, beam_size=len(ids))
    best = exhaustive_scores(model, ids, history, user).topk(10, dim=1)
    assert torch.equal(ranked.items, best.indices)
    torch.testing.assert_close(ranked.scores, best.values, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_trie_softmax_is_a_distribution_over_the_catalogue(arch):
    """Limited to the trie, the item probabilities of every history sum to one; over the whole
    vocabulary part of the mass goes to IDs no item has."""
    ids = catalogue(40, levels=3, size=4)
    history, user = histories(ids)
    limited = exhaustive_scores(tiny_model(arch, ids, trie_softmax=True), ids, history, user).exp().sum(1)
    whole = exhaustive_scores(tiny_model(arch, ids), ids, history, user).exp().sum(1)
    torch.testing.assert_close(limited, torch.ones(len(history)))
    assert bool((whole < 0.9).all())


@pytest.mark.parametrize("arch", ARCHS)
def test_narrow_beam_returns_distinct_real_items_with_their_true_scores(arch):
    ids = catalogue(60, levels=3, size=5)
    model = tiny_model(arch, ids, size=5)
    subset = torch.arange(0, 60, 2)  # only every other item may be decoded
    trie = ItemTrie(ids[subset], subset, model.cfg.level_sizes)
    history, user = histories(ids)
    ranked = beam_search(model, trie, history, user, k=5, beam_size=5)
    exhaustive = exhaustive_scores(model, ids, history, user)
    for row, scores in zip(ranked.items, ranked.scores):
        assert len(set(row.tolist())) == 5
        assert set(row.tolist()) <= set(subset.tolist())
        assert torch.all(scores[:-1] >= scores[1:])
    torch.testing.assert_close(ranked.scores, exhaustive.gather(1, ranked.items), atol=1e-4, rtol=1e-4)


def test_beam_search_is_deterministic_and_batched_users_are_independent():
    ids = catalogue(40)
    model = tiny_model("encoder-decoder", ids)
    trie = ItemTrie(ids, torch.arange(len(ids)), model.cfg.level_sizes)
    history, user = histories(ids)
    together = beam_search(model, trie, history, user, k=5, beam_size=8)
    again = beam_search(model, trie, history, user, k=5, beam_size=8)
    alone = beam_search(model, trie, history[2:3], user[2:3], k=5, beam_size=8)
    assert torch.equal(together.items, again.items)
    assert torch.equal(together.items[2:3], alone.items)


def test_excluded_items_never_come_out():
    ids = catalogue(40)
    model = tiny_model("decoder-only", ids)
    trie = ItemTrie(ids, torch.arange(len(ids)), model.cfg.level_sizes)
    history, user = histories(ids)
    first = beam_search(model, trie, history, user, k=5, beam_size=40)
    exclude = torch.zeros(len(history), len(ids), dtype=torch.bool)
    exclude.scatter_(1, first.items[:, :3], True)
    second = beam_search(model, trie, history, user, k=5, beam_size=40, exclude=exclude)
    assert torch.equal(second.items[:, :2], first.items[:, 3:])
    assert not exclude.gather(1, second.items).any()


@pytest.mark.parametrize(
    "k,beam,message",
    [(41, 50, "larger than the catalogue"), (10, 5, "beam .* smaller than K"), (0, 5, "at least one item")],
)
def test_bad_requests_are_clear_errors(k, beam, message):
    ids = catalogue(40)
    model = tiny_model("encoder-decoder", ids)
    trie = ItemTrie(ids, torch.arange(len(ids)), model.cfg.level_sizes)
    history, user = histories(ids)
    with pytest.raises(SemrecError, match=message):
        beam_search(model, trie, history, user, k=k, beam_size=beam)


def test_an_empty_history_is_a_clear_error():
    ids = catalogue(40)
    model = tiny_model("encoder-decoder", ids)
    trie = ItemTrie(ids, torch.arange(len(ids)), model.cfg.level_sizes)
    history, user = histories(ids)
    history[1] = -1
    with pytest.raises(SemrecError, match="history is empty"):
        beam_search(model, trie, history, user, k=5, beam_size=5)


def test_two_items_with_one_whole_id_are_refused():
    ids = catalogue(10)
    ids[3] = ids[7]
    with pytest.raises(SemrecError, match="share a whole semantic ID"):
        ItemTrie(ids, torch.arange(10), [4, 4, 3])


def test_a_walk_down_the_trie_ends_at_each_item_and_stops_where_an_id_leaves_it():
    codes = torch.tensor([[0, 1, 0], [0, 2, 0], [3, 1, 1]])
    trie = ItemTrie(codes, torch.tensor([7, 8, 9]), [4, 4, 2])
    states = trie.walk(codes).tolist()
    assert [row[-1] for row in states] == [7, 8, 9]
    assert states[0][0] == states[1][0] != states[2][0]  # one first token, one state
    off = trie.walk(torch.tensor([[3, 2, 0], [0, 1, 1]])).tolist()
    assert off == [[states[2][0], -1, -1], [*states[0][:2], -1]]
