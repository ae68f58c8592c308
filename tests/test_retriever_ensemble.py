"""An ensemble of retrievers (retriever.ensemble): exact beam search over the product of its members,
one file, and `semrec fit-retriever` training its members from their own seeds, resumable."""

import json

import pytest
import torch

from semrec.retriever.beam import ItemTrie, beam_search
from semrec.retriever.ensemble import Ensemble
from semrec.retriever.checkpoint import load_retriever
from semrec.retriever.fit import run_fit_retriever
from semrec.evaluate import run_eval
from semrec.html_report.collect import retriever_section
from semrec.workspace import StageRun
from test_beam import ARCHS, catalogue, histories, item_scores, teacher_forced_logits, tiny_model
from test_evaluate import assert_same_retriever, interrupted_then_resumed, prepared_workspace


def ensemble_scores(members, ids, history, user) -> torch.Tensor:
    """Every item's score under the product of experts, by teacher forcing: at each position the
    renormalised mean of the members' log-probabilities, summed over the item's tokens (B, N)."""
    per_member = [teacher_forced_logits(m, ids, history, user) for m in members]
    mean = [torch.stack([torch.log_softmax(lg[p], -1) for lg in per_member]).mean(0) for p in range(len(per_member[0]))]
    return item_scores(mean, ids, len(history))


@pytest.mark.parametrize("trie_softmax", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_ensemble_beam_search_equals_exhaustive_search_over_the_product(arch, trie_softmax):
    ids = catalogue(40)
    members = [tiny_model(arch, ids, item_ids=True, trie_softmax=trie_softmax, seed=seed) for seed in (0, 1, 2)]
    trie = ItemTrie(ids, torch.arange(len(ids)), members[0].cfg.level_sizes)
    history, user = histories(ids)
    ranked = beam_search(Ensemble(members), trie, history, user, k=10, beam_size=len(ids))
    best = ensemble_scores(members, ids, history, user).topk(10, dim=1)
    assert torch.equal(ranked.items, best.indices)
    torch.testing.assert_close(ranked.scores, best.values, atol=1e-4, rtol=1e-4)
    alone = [beam_search(m, trie, history, user, k=10, beam_size=len(ids)).items for m in members]
    assert not all(torch.equal(ranked.items, items) for items in alone)  # the members disagree, and it shows


def test_an_ensemble_of_copies_ranks_exactly_as_its_member():
    ids = catalogue(40)
    member = tiny_model("item-level", ids)
    trie = ItemTrie(ids, torch.arange(len(ids)), member.cfg.level_sizes)
    history, user = histories(ids)
    alone = beam_search(member, trie, history, user, k=5, beam_size=8)
    together = beam_search(Ensemble([member, member]), trie, history, user, k=5, beam_size=8)
    assert torch.equal(alone.items, together.items)
    torch.testing.assert_close(alone.scores, together.scores)


def test_an_ensemble_is_saved_to_one_file_and_loaded_back(tmp_path):
    ids = catalogue(40)
    ensemble = Ensemble([tiny_model("item-level", ids, item_ids=True, seed=seed) for seed in (0, 1)])
    ensemble.save(tmp_path / "model.safetensors")
    loaded = load_retriever(tmp_path / "model.safetensors", expect={"arch": "item-level"})
    assert isinstance(loaded, Ensemble) and len(loaded.members) == 2
    trie = ItemTrie(ids, torch.arange(len(ids)), ensemble.cfg.level_sizes)
    history, user = histories(ids)
    a, b = (beam_search(m, trie, history, user, k=5, beam_size=10) for m in (ensemble, loaded))
    assert torch.equal(a.items, b.items)


def test_members_must_share_their_config():
    ids = catalogue(40)
    with pytest.raises(ValueError, match="share one config"):
        Ensemble([tiny_model("item-level", ids), tiny_model("decoder-only", ids)])


ENSEMBLE = {"retriever.arch": "item-level", "retriever.item_embeddings": True, "retriever.ensemble": 2,
            "retriever.train.steps": 30, "retriever.eval_every": 10, "retriever.train.checkpoint_every": 10,
            "retriever.dropout": 0.1, "retriever.valid_users": 100}


@pytest.mark.slow
def test_fit_trains_each_member_from_its_own_seed_and_eval_ranks_with_all(make_workspace):
    ws = prepared_workspace(make_workspace, **ENSEMBLE)
    figures = run_fit_retriever(ws, StageRun("fit-retriever", "fp"))
    assert figures["members"] == 2 and figures["steps"] == 60 and len(figures["member_valid_ndcg@10"]) == 2
    model = load_retriever(ws.path("retriever/model.safetensors"))
    first, second = model.members
    assert not torch.equal(first.tokens.weight, second.tokens.weight)
    metrics = json.loads(ws.path("retriever/metrics.json").read_text())
    assert [m["steps"] for m in metrics["member_figures"]] == [30, 30] and len(metrics["member_histories"]) == 2
    assert metrics["valid_ndcg@10"] == figures["valid_ndcg@10"]
    assert sorted(ws.path("retriever/checkpoints").iterdir()) == [ws.path(f"retriever/checkpoints/member-{i}") for i in (1, 2)]
    shown = retriever_section(ws)["models"]  # the HTML report: the ensemble's totals, each member's curves
    assert list(shown) == ["retriever", "retriever 1/2", "retriever 2/2"]
    assert all("valid_ndcg@10" in shown[f"retriever {i}/2"]["curves"] for i in (1, 2))
    result = run_eval(ws, StageRun("eval", "fp"))
    assert result["model"]["members"] == 2 and "2 seeds" in result["model"]["name"]
    assert 0 < result["metrics"]["recall@10"] <= 1


@pytest.mark.slow
def test_an_interrupted_ensemble_resumes_inside_its_member_and_matches_the_uninterrupted_run(
        make_workspace, monkeypatch):
    straight = prepared_workspace(make_workspace, **ENSEMBLE)
    run_fit_retriever(straight, StageRun("fit-retriever", "fp"))
    resumed = interrupted_then_resumed(make_workspace, monkeypatch, ENSEMBLE, batches=45)  # the second's step 14
    log = resumed.reporter.text().splitlines()
    assert any("resuming" in m and "2 of 2" in m and "step 10" in m for m in log)
    assert any("resuming" in m and "1 of 2" in m and "step 30" in m for m in log)  # read back, not retrained
    assert_same_retriever(straight, resumed)
    metrics = lambda ws: json.loads(ws.path("retriever/metrics.json").read_text())  # noqa: E731
    assert metrics(straight)["member_histories"] == metrics(resumed)["member_histories"]
