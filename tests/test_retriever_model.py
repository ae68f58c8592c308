"""The retriever model: decoding equals teacher forcing, all-positions training equals TIGER's prefix
examples, no target sees itself or a later item, checkpoints rebuild the model or refuse clearly."""

import dataclasses

import pytest
import torch

from semrec.errors import SemrecError
from semrec.retriever.checkpoint import load_retriever
from semrec.retriever.model import Batch, Dropout, RetrieverConfig, build_retriever

ARCHS = ["encoder-decoder", "decoder-only", "item-level"]


def tiny_config(arch: str, **overrides) -> RetrieverConfig:
    values = dict(arch=arch, levels=3, codebook_size=5, collision_size=3, user_bins=7, max_seq_len=4, d_model=16,
                  heads=2, head_dim=8, encoder_layers=2, decoder_layers=2, ff_dim=32, dropout=0.0)
    values.update(overrides)
    return RetrieverConfig(**values)


def random_batch(cfg: RetrieverConfig, b: int = 5, n: int = 4, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    sizes = torch.tensor(cfg.level_sizes)
    history = (torch.rand(b, n, cfg.positions, generator=g) * sizes).long()
    lengths = torch.tensor([n, 1, 2, n, 3][:b]).clamp(max=n)
    history[torch.arange(n)[None, :] < (n - lengths)[:, None]] = -1  # left padding
    user = torch.randint(0, max(cfg.user_bins, 1), (b,), generator=g)
    user[1] = -1
    target = (torch.rand(b, cfg.positions, generator=g) * sizes).long()
    return window(history, target, user if cfg.user_bins else torch.full((b,), -1))


def window(history: torch.Tensor, target: torch.Tensor, user: torch.Tensor) -> Batch:
    """A history (B, n, L+1) and its next item (B, L+1) as one window whose last item is the target."""
    items = torch.cat([history, target[:, None]], 1)
    targets = torch.zeros(items.shape[:2], dtype=torch.bool)
    targets[:, -1] = True
    return Batch(items, user, targets)


def history_of(batch: Batch) -> torch.Tensor:
    return batch.items[:, :-1]


def target_of(batch: Batch) -> torch.Tensor:
    return batch.items[:, -1]


def with_item_ids(cfg: RetrieverConfig, batch: Batch) -> tuple[RetrieverConfig, torch.Tensor]:
    """The config with ID embeddings for every distinct item of the batch but its first history item,
    which stands for one tokenized after training; and those items' codes."""
    items = batch.items[batch.items[..., 0] >= 0].unique(dim=0)
    known = items[(items != batch.items[0, -2]).any(1)]
    return dataclasses.replace(cfg, item_ids=len(known)), known


@pytest.mark.parametrize("item_ids, tie_head", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("beams", [1, 3])
def test_decoding_steps_equal_teacher_forced_logits(arch, beams, item_ids, tie_head):
    torch.manual_seed(0)
    cfg = tiny_config(arch, tie_head=tie_head)
    batch = random_batch(cfg)
    codes = None
    if item_ids:
        cfg, codes = with_item_ids(cfg, batch)
    model = build_retriever(cfg, codes).eval()
    with torch.no_grad():
        logits = model(batch).logits
    context = model.start(history_of(batch), batch.user)
    for p in range(cfg.positions):
        prefix = target_of(batch)[:, None, :p].expand(-1, beams, -1)  # (B, W, p): every beam holds the same prefix
        step = model.step_logits(context, prefix)
        assert step.shape == (5, beams, cfg.level_sizes[p])
        torch.testing.assert_close(step, logits[p][:, None].expand_as(step), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_does_not_change_the_prediction(arch):
    torch.manual_seed(0)
    cfg = tiny_config(arch)
    model = build_retriever(cfg).eval()
    batch = random_batch(cfg, b=2, n=2)
    padded = Batch(torch.cat([torch.full((2, 2, cfg.positions), -1), batch.items], 1), batch.user,
                   torch.cat([torch.zeros(2, 2, dtype=torch.bool), batch.targets], 1))
    with torch.no_grad():
        for a, b in zip(model(batch).logits, model(padded).logits):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_user_token_changes_the_prediction_only_when_enabled():
    torch.manual_seed(0)
    model = build_retriever(tiny_config("encoder-decoder")).eval()
    batch = random_batch(model.cfg, b=2)
    other = batch._replace(user=(batch.user + 1) % model.cfg.user_bins)
    with torch.no_grad():
        assert not torch.allclose(model(batch).logits[0], model(other).logits[0])
    assert build_retriever(tiny_config("encoder-decoder", user_bins=0)).tokens.num_embeddings == 3 + 3 * 5 + 3


def test_training_loss_is_cross_entropy_over_each_positions_own_tokens():
    cfg = tiny_config("decoder-only")
    model = build_retriever(cfg).eval()
    with torch.no_grad():
        out = model(random_batch(cfg))
    assert [lg.shape[1] for lg in out.logits] == [5, 5, 5, 3]
    # an untrained model is close to uniform over each position's tokens
    expected = torch.tensor([5.0, 5.0, 5.0, 3.0]).log().mean()
    assert abs(float(out.loss) - float(expected)) < 0.3


def test_a_tied_head_scores_each_code_by_its_input_embedding():
    cfg = tiny_config("decoder-only", tie_head=True)
    model = build_retriever(cfg)
    assert not hasattr(model, "head")
    h = torch.randn(6, cfg.d_model, generator=torch.Generator().manual_seed(0))
    for p, size in enumerate(cfg.level_sizes):
        first = int(model.token_offset[p])  # token id of code 0 at position p
        lo = first - 3  # where position p's codes start among the item tokens (after PAD, BOS, reserved)
        expected = h @ model.tokens.weight[first : first + size].T + model.head_bias[lo : lo + size]
        torch.testing.assert_close(model._position_logits(h, p), expected)


def test_trie_softmax_and_label_smoothing_train_with_finite_gradients():
    from semrec.retriever.beam import ItemTrie

    torch.manual_seed(0)
    cfg = tiny_config("encoder-decoder", trie_softmax=True, label_smoothing=0.1, dropout=0.1)
    batch = random_batch(cfg)
    model = build_retriever(cfg).train()
    catalogue = batch.items[batch.items[..., 0] >= 0].unique(dim=0)
    model.use_trie(ItemTrie(catalogue, torch.arange(len(catalogue)), cfg.level_sizes))
    loss = model(batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    outside = batch.items.clone()
    outside[0, -1] = torch.tensor([cfg.codebook_size - 1] * cfg.levels + [cfg.collision_size - 1])
    if not bool((catalogue == outside[0, -1]).all(1).any()):
        with pytest.raises(ValueError, match="not in the trie"):
            model(Batch(outside, batch.user, batch.targets))


def test_label_smoothing_spreads_mass_over_the_tokens_still_possible():
    """Over a whole vocabulary it is torch's label smoothing; tokens ruled out (-inf) get none of it."""
    from semrec.retriever.model import smoothed_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(6, 5, generator=g), torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(smoothed_cross_entropy(logits, target, 0.1),
                               torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1))
    limited = logits.clone()
    limited[:, 3:][target[:, None].expand(-1, 2) < 3] = float("-inf")  # rows whose target is 0-2 keep 0-2
    rows = target < 3
    torch.testing.assert_close(smoothed_cross_entropy(limited[rows], target[rows], 0.1),
                               torch.nn.functional.cross_entropy(logits[rows, :3], target[rows], label_smoothing=0.1))


def test_decoder_only_has_a_comparable_parameter_count_at_the_published_size():
    sizes = dict(levels=3, codebook_size=256, collision_size=10, user_bins=2000, max_seq_len=20)
    enc_dec = build_retriever(RetrieverConfig(arch="encoder-decoder", **sizes)).num_params()
    dec = build_retriever(RetrieverConfig(arch="decoder-only", **sizes)).num_params()
    assert 0.75 < dec / enc_dec < 1.0


@pytest.mark.parametrize("item_ids, tie_head", [(False, False), (True, False), (False, True)])
def test_checkpoint_rebuilds_the_model(tmp_path, item_ids, tie_head):
    torch.manual_seed(0)
    cfg = tiny_config("encoder-decoder", tie_head=tie_head)
    batch = random_batch(cfg)
    codes = None
    if item_ids:
        cfg, codes = with_item_ids(cfg, batch)
    model = build_retriever(cfg, codes).eval()
    model.save(tmp_path / "m.safetensors", {"steps": 3})
    loaded = load_retriever(tmp_path / "m.safetensors")
    assert loaded.cfg == cfg
    with torch.no_grad():
        torch.testing.assert_close(model(batch).loss, loaded(batch).loss)


@pytest.mark.parametrize("key,value", [("arch", "decoder-only"), ("collision_size", 4), ("codebook_size", 6)])
def test_loading_under_another_architecture_or_vocabulary_is_a_clear_error(tmp_path, key, value):
    build_retriever(tiny_config("encoder-decoder")).save(tmp_path / "m.safetensors")
    with pytest.raises(SemrecError, match=f"trained with {key} = ") as info:
        load_retriever(tmp_path / "m.safetensors", expect={key: value})
    assert "semrec fit-retriever" in str(info.value)


def test_loading_a_file_that_is_not_a_retriever_is_a_clear_error(tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SemrecError, match="cannot read the retriever"):
        load_retriever(tmp_path / "m.safetensors")


def test_cpu_dropout_keeps_each_element_with_probability_one_minus_p_and_is_seeded():
    drop = Dropout(0.1)
    x = torch.ones(401, 999)  # not a multiple of the four draws per random number
    torch.manual_seed(3)
    first = drop(x)
    kept = (first != 0).float()
    assert abs(float(kept.mean()) - 0.9) < 0.003
    assert abs(float(kept.flatten()[:400_000].view(-1, 4).mean(0).std())) < 0.003  # the four 16-bit slices are alike
    assert torch.allclose(first[first != 0], torch.full_like(first[first != 0], 1 / 0.9))
    torch.manual_seed(3)
    assert torch.equal(drop(x), first)
    assert torch.equal(drop.eval()(x), x)


@pytest.mark.parametrize("arch", ARCHS)
def test_item_ids_find_each_known_item_and_leave_others_without_one(arch):
    torch.manual_seed(0)
    cfg = tiny_config(arch)
    batch = random_batch(cfg)
    cfg, known = with_item_ids(cfg, batch)
    model = build_retriever(cfg, known[torch.randperm(len(known))]).eval()  # the table's order does not matter
    rows = model._item_rows(known[None])[0]
    assert sorted(rows.tolist()) == list(range(len(known)))  # one row each
    outside = model._item_rows(batch.items)
    assert (outside[batch.items[..., 0] < 0] == cfg.item_ids).all()  # padding reads the empty row
    assert outside[0, -2] == cfg.item_ids  # so does an item the table does not hold
    assert not model.item_embedding.weight[cfg.item_ids].any()
    with torch.no_grad():  # and it reads as its tokens alone: the same prediction with no ID table at all
        plain = build_retriever(dataclasses.replace(cfg, item_ids=0))
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("item_")})
        only_unknown = Batch(batch.items[:1, -2:], batch.user[:1], batch.targets[:1, -2:])
        torch.testing.assert_close(model.eval()(only_unknown).logits, plain.eval()(only_unknown).logits)


def test_two_items_with_one_whole_id_get_no_id_table():
    cfg = tiny_config("decoder-only", item_ids=2)
    with pytest.raises(ValueError, match="share one whole semantic ID"):
        build_retriever(cfg, torch.tensor([[1, 2, 3, 0], [1, 2, 3, 0]]))
