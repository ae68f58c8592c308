"""All-positions ("causal") training against TIGER's prefix examples: the same targets, the same
losses, each target once per epoch, and no target ever sees itself or a later item."""

import pytest
import torch

from semrec.retriever import data as retriever_data
from semrec.retriever.data import Batches, SemanticIds, Sequences, training_windows
from semrec.retriever.model import RetrieverConfig, build_retriever
from semrec.train import epoch_indices

ARCHS = ["encoder-decoder", "decoder-only", "item-level"]
LEVELS, SIZE = 2, 5


def semantic_ids(n_items: int = 30) -> SemanticIds:
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, SIZE, (n_items, LEVELS), generator=g)
    return SemanticIds(torch.cat([codes, torch.arange(n_items)[:, None] % 2], 1), SIZE, "synthetic")


def sequences(lengths: list[int], mode: str, max_seq_len: int = 6, seed: int = 1) -> Sequences:
    g = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths)
    flat = torch.randint(0, 30, (int(lengths_t.sum()),), generator=g)
    users = torch.arange(len(lengths))
    return Sequences(flat, lengths_t, valid=users, test=users, users=users, bins=users % 3, max_seq_len=max_seq_len,
                     mode=mode)


def tiny_model(arch: str, item_ids: bool = False):
    torch.manual_seed(0)
    ids = semantic_ids().codes.unique(dim=0)  # the synthetic IDs repeat; each whole ID gets one row
    cfg = RetrieverConfig(arch=arch, levels=LEVELS, codebook_size=SIZE, collision_size=2, user_bins=3, max_seq_len=6,
                          d_model=16, heads=2, head_dim=8, encoder_layers=1, decoder_layers=1, ff_dim=32, dropout=0.0,
                          item_ids=len(ids) if item_ids else 0)
    return build_retriever(cfg, ids).eval()


def all_windows(seqs: Sequences):
    """Every training window of `seqs` as one batch (no user dropout)."""
    batches = Batches(semantic_ids(), seqs, torch.device("cpu"), seed=0)
    return batches.training(torch.arange(len(seqs)), step=0)[0]


@pytest.fixture(autouse=True)
def no_user_dropout(monkeypatch):
    monkeypatch.setattr(retriever_data, "USER_DROPOUT", 0.0)


@pytest.mark.parametrize("arch", ARCHS)
def test_causal_and_prefix_training_give_the_same_loss_on_a_sequence_of_two_items(arch):
    model = tiny_model(arch)
    with torch.no_grad():
        causal = model(all_windows(sequences([2], "causal"))).loss
        prefix = model(all_windows(sequences([2], "prefix"))).loss
    torch.testing.assert_close(causal, prefix, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_causal_loss_is_the_mean_of_the_prefix_losses(arch):
    model = tiny_model(arch)
    lengths = [5, 3, 7, 2]  # all within the history cap of 6 (+1 target)
    with torch.no_grad():
        causal = model(all_windows(sequences(lengths, "causal"))).loss
        prefix_examples = all_windows(sequences(lengths, "prefix"))
        prefix = torch.stack([model(prefix_examples._replace(
            items=prefix_examples.items[i:i + 1], user=prefix_examples.user[i:i + 1],
            targets=prefix_examples.targets[i:i + 1])).loss for i in range(len(prefix_examples.items))])
    assert len(prefix) == sum(n - 1 for n in lengths)
    torch.testing.assert_close(causal, prefix.mean(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["causal", "prefix"])
@pytest.mark.parametrize("cap", [1, 3, 6])
def test_every_training_target_is_predicted_once_per_epoch_within_the_history_cap(mode, cap):
    lengths = torch.tensor([1, 2, 5, 9, 13, 4])
    start, end, first, owner_of_window = training_windows(lengths, cap, mode)
    seen = torch.cat([torch.arange(int(f), int(e) + 1) for f, e in zip(first, end)])
    starts = torch.cumsum(lengths, 0) - lengths
    expected = torch.tensor([i for s, n in zip(starts.tolist(), lengths.tolist()) for i in range(s + 1, s + n)])
    assert sorted(seen.tolist()) == expected.tolist()  # each target once
    assert bool((first > start).all()) and bool((end - start <= cap).all())  # history within the window and the cap
    owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    assert bool((owner[start] == owner[end]).all()) and owner[end].tolist() == owner_of_window.tolist()  # one user each
    batches = 4
    epoch = torch.cat([epoch_indices(len(end), -(-len(end) // batches), step, seed=3, drop_last=False)
                       for step in range(batches)])
    assert sorted(epoch.tolist()) == list(range(len(end)))  # every window once per epoch


@pytest.mark.parametrize("item_ids", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_no_target_sees_itself_or_a_later_item(arch, item_ids):
    model = tiny_model(arch, item_ids)
    batch = all_windows(sequences([7], "causal"))  # one window of 7 items, 6 targets
    with torch.no_grad():
        base = model(batch).logits
        for k in range(1, 7):  # change item k's collision token and every code after it
            items = batch.items.clone()
            items[0, k, -1] = 1 - items[0, k, -1]
            items[0, k + 1:, :-1] = (items[0, k + 1:, :-1] + 1) % SIZE
            changed = model(batch._replace(items=items)).logits
            for p in range(LEVELS + 1):  # targets 1..k (rows 0..k-1) never see what changed
                torch.testing.assert_close(changed[p][:k], base[p][:k], rtol=0, atol=1e-6)
            if k < 6:  # the next target reads item k whole
                assert not torch.allclose(changed[0][k], base[0][k])
