"""Ranking metrics, the popularity baseline, fitting the retriever on a small demo, and `semrec eval`.

The tokenizer stages are replaced here by a synthetic one (IDs from each demo item's category path
and a hash of its key), so these tests exercise the retriever alone; the real pipeline is tested
end to end elsewhere.
"""

import dataclasses
import json
import math
import re
import zlib
from pathlib import Path

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from semrec.cli import app
from semrec.baselines.popularity import popularity_ranking
from semrec.evaluate import run_eval
from semrec.metrics import hit_ranks, metrics_by_history_length, ndcg_at_k, recall_at_k
from semrec.pipeline import STAGES
from semrec.project import render_toml
from semrec.retriever.fit import run_fit_retriever
from semrec.artifacts import ITEMS, SEMANTIC_IDS, TAGS, TOKENIZER
from semrec.io import atomic_write_json, write_parquet
from semrec.workspace import StageRun
from conftest import copied_workspace, workspace_at

CODEBOOK = 16
TINY = {
    "data.demo_items": 300, "data.demo_users": 400, "retriever.max_seq_len": 8,
    "retriever.d_model": 32, "retriever.heads": 2, "retriever.head_dim": 16, "retriever.ff_dim": 64,
    "retriever.encoder_layers": 1, "retriever.decoder_layers": 1, "retriever.dropout": 0.0,
    "retriever.train.steps": 60, "retriever.eval_every": 20, "retriever.train.warmup_steps": 10, "retriever.train.batch_size": 64,
    "retriever.train.lr": 0.005, "retriever.valid_users": 0, "retriever.train.checkpoint_every": 40, "retriever.device": "cpu",
}


# -- synthetic tokenizer stages ------------------------------------------------------------------
def write_synthetic_ids(ws) -> None:
    """code_1: the item's aisle, code_2: its shelf, code_3: a hash of its key; dedup makes IDs unique."""
    frame = pl.read_parquet(ws.path(ITEMS), columns=["item", "item_key", "category_path"]).sort("item")
    paths = frame["category_path"].to_list()
    aisles = {a: i for i, a in enumerate(sorted({tuple(p[:2]) for p in paths}))}
    shelves = {s: i for i, s in enumerate(sorted({tuple(p) for p in paths}))}
    rows, seen = [], {}
    for item, key, path in zip(frame["item"], frame["item_key"], paths):
        codes = (aisles[tuple(path[:2])] % CODEBOOK, shelves[tuple(path)] % CODEBOOK, zlib.crc32(key.encode()) % CODEBOOK)
        rows.append((item, *codes, seen.get(codes, 0)))
        seen[codes] = seen.get(codes, 0) + 1
    columns = ["item", "code_1", "code_2", "code_3", "dedup"]
    write_parquet(pl.DataFrame(rows, schema={c: pl.Int64 for c in columns}, orient="row"), ws.path(SEMANTIC_IDS))


def write_synthetic_tags(ws) -> None:
    frame = pl.read_parquet(ws.path(ITEMS), columns=["item", "category_path"])
    tags = {f"tag_{i}": [" > ".join(p[:i]) for p in frame["category_path"]] for i in (1, 2, 3)}
    sources = {f"source_{i}": ["metadata"] * frame.height for i in (1, 2, 3)}
    write_parquet(pl.DataFrame({"item": frame["item"], **tags, **sources}), ws.path(TAGS))


def fake_fit_tokenizer(ws, run) -> dict:
    atomic_write_json(ws.path(TOKENIZER) / "config.json", {"kind": "synthetic", "levels": 3, "codebook_size": CODEBOOK})
    return {}


def fake_tokenize(ws, run) -> dict:
    write_synthetic_ids(ws)
    write_synthetic_tags(ws)
    return {}


def use_synthetic_tokenizer(monkeypatch) -> None:
    """Let the stage runner run the synthetic tokenizer stages instead of the real ones."""
    monkeypatch.setitem(STAGES, "fit-tokenizer", dataclasses.replace(
        STAGES["fit-tokenizer"], run=f"{__name__}:fake_fit_tokenizer", upstream=lambda settings: ("download",)))
    monkeypatch.setitem(STAGES, "tokenize", dataclasses.replace(STAGES["tokenize"], run=f"{__name__}:fake_tokenize"))


def prepared_workspace(make_workspace, **overrides):
    """A small demo workspace with its data and synthetic semantic IDs and tags, its project file on disk."""
    ws = make_workspace("demo", **{**TINY, **overrides})
    ws.project.path.write_text(render_toml(ws.settings))
    ws.ensure("download")
    fake_fit_tokenizer(ws, None)
    fake_tokenize(ws, None)
    return ws


# -- metrics -------------------------------------------------------------------------------------
def test_metrics_by_history_length_split_users_into_buckets_that_have_users():
    ranked = torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]])
    targets = torch.tensor([1, 4, 9, 7])
    lengths = torch.tensor([3, 4, 12, 250])
    buckets = metrics_by_history_length(ranked, targets, lengths, k=2)
    assert [(b["lengths"], b["users"]) for b in buckets] == [("0-4", 2), ("10-19", 1), ("200+", 1)]
    assert buckets[0]["recall@2"] == 1.0 and buckets[0]["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert buckets[1]["recall@2"] == 0.0 and buckets[2]["ndcg@2"] == 1.0


def test_recall_and_ndcg_by_hand():
    ranked = torch.tensor([[5, 3, 9], [1, 2, 3], [7, 8, 9]])
    targets = torch.tensor([3, 4, 7])
    assert hit_ranks(ranked, targets).tolist() == [1, 3, 0]
    assert recall_at_k(ranked, targets, 1) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, targets, 3) == pytest.approx(2 / 3)
    assert ndcg_at_k(ranked, targets, 1) == pytest.approx(1 / 3)
    assert ndcg_at_k(ranked, targets, 3) == pytest.approx((1 / math.log2(3) + 1) / 3)


def test_popularity_ranks_the_most_frequent_training_items_first():
    train = torch.tensor([4, 2, 4, 1, 2, 4, 0])
    assert popularity_ranking(train, n_items=6, k=4).tolist() == [4, 2, 0, 1]


# -- fitting -------------------------------------------------------------------------------------
VARIANTS = {
    "encoder-decoder": {"retriever.arch": "encoder-decoder"},
    "decoder-only": {"retriever.arch": "decoder-only"},
    "decoder-only with item IDs": {"retriever.arch": "decoder-only", "retriever.item_embeddings": True},
    "decoder-only, trie softmax, tied head": {"retriever.arch": "decoder-only", "retriever.item_embeddings": True,
                                              "retriever.trie_softmax": True, "retriever.tie_head": True},
    "item-level with item IDs": {"retriever.arch": "item-level", "retriever.item_embeddings": True},
}


@pytest.fixture(scope="module")
def fitted_once(tmp_path_factory) -> dict[str, Path]:
    """One tiny retriever per architecture (and ones that read item IDs, one with the trie softmax and a
    tied head), trained once for this module through the stage runner."""
    roots = {}
    with pytest.MonkeyPatch.context() as patch:
        use_synthetic_tokenizer(patch)
        for name, settings in VARIANTS.items():
            root = tmp_path_factory.mktemp(name.replace(" ", "-"))
            ws = workspace_at(root, "demo", **{**TINY, **settings})
            ws.project.path.write_text(render_toml(ws.settings))
            ws.ensure("fit-retriever")
            roots[name] = root
    return roots


@pytest.fixture
def fitted(fitted_once, tmp_path, monkeypatch):
    """fitted(variant) -> a copy of that variant's trained workspace, the synthetic tokenizer stages in place."""
    use_synthetic_tokenizer(monkeypatch)
    return lambda variant: copied_workspace(fitted_once[variant], tmp_path / variant.replace(" ", "-"))


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_fitting_a_tiny_model_lowers_the_validation_loss_and_beats_popularity(fitted, variant):
    ws = fitted(variant)
    metrics = json.loads(ws.path("retriever/metrics.json").read_text())
    losses = [entry["valid_loss"] for entry in metrics["history"] if "valid_loss" in entry]
    collisions = int(pl.read_parquet(ws.path(SEMANTIC_IDS))["dedup"].max()) + 1
    uniform = (3 * math.log(CODEBOOK) + math.log(collisions)) / 4  # the loss of a model that learned nothing
    assert len(losses) == 3 and losses[-1] < losses[0] < uniform
    assert metrics["steps"] == 60 and metrics["tokens_per_s"] > 0
    result = run_eval(ws, StageRun("eval", "fp"))
    assert result["users"] == 400 and result["split"] == "test"
    assert result["metrics"]["recall@10"] > 1.5 * result["baselines"]["popularity"]["recall@10"]


def interrupted_then_resumed(make_workspace, monkeypatch, settings: dict, batches: int):
    """A workspace whose fit-retriever stopped (KeyboardInterrupt) when asked for its batches-th training
    batch, then ran again with resume."""
    from semrec.retriever.data import Batches

    ws = prepared_workspace(make_workspace, **settings)
    training, calls = Batches.training, []

    def interrupted(self, index, step, *share):
        calls.append(step)
        if len(calls) == batches:
            raise KeyboardInterrupt
        return training(self, index, step, *share)

    monkeypatch.setattr(Batches, "training", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_fit_retriever(ws, StageRun("fit-retriever", "fp"))
    monkeypatch.setattr(Batches, "training", training)
    run_fit_retriever(ws, StageRun("fit-retriever", "fp", options={"resume": True}))
    return ws


def assert_same_retriever(a, b) -> None:
    """Two workspaces' retriever files hold the same weights to the last bit."""
    from safetensors.torch import load_file

    first, second = (load_file(str(ws.path("retriever/model.safetensors"))) for ws in (a, b))
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["causal", "prefix"])
def test_resume_matches_uninterrupted_run(make_workspace, monkeypatch, mode):
    settings = {"retriever.train.steps": 30, "retriever.eval_every": 10, "retriever.train.checkpoint_every": 10,
                "retriever.training": mode, "retriever.dropout": 0.1, "retriever.valid_users": 100}
    straight = prepared_workspace(make_workspace, **settings)
    run_fit_retriever(straight, StageRun("fit-retriever", "fp"))
    resumed = interrupted_then_resumed(make_workspace, monkeypatch, settings, batches=16)  # at step 15
    assert any("resuming" in m and "step 10" in m for m in resumed.reporter.text().splitlines())
    assert_same_retriever(straight, resumed)
    curve = lambda ws: json.loads(ws.path("retriever/metrics.json").read_text())["history"]  # noqa: E731
    assert curve(straight) == curve(resumed)


# -- the command ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("split", ["test", "valid"])
def test_eval_json_has_the_documented_shape(fitted, split):
    ws = fitted("encoder-decoder")
    result = CliRunner().invoke(app, ["--project", str(ws.root), "eval", "--split", split, "--json"])
    assert result.exit_code == 0, result.output
    assert "running it first" not in result.stderr  # the trained model is reused, not retrained
    report = json.loads(result.stdout)
    keys = {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    assert set(report["metrics"]) == keys and set(report["baselines"]["popularity"]) == keys
    assert report["split"] == split and report["users"] == 400
    by_length = report["by_history_length"]
    assert list(by_length) == ["retriever", "popularity"]
    assert sum(bucket["users"] for bucket in by_length["retriever"]) == 400
    assert set(by_length["retriever"][0]) == {"lengths", "users", "recall@10", "ndcg@10"}
    assert {"name", "arch", "params", "tokenizer", "steps"} <= set(report["model"])
    assert all(0.0 <= v <= 1.0 for v in report["metrics"].values())
    assert json.loads(ws.path("eval/metrics.json").read_text()) == report


@pytest.mark.slow
def test_eval_ranks_sasrec_beside_the_retriever_when_asked_and_once_trained(fitted):
    ws = fitted("decoder-only")
    head, tail = ws.project.path.read_text().split("[baselines.sasrec.train]")
    ws.project.path.write_text(head + "[baselines.sasrec.train]" + re.sub(r"\nsteps = \d+", "\nsteps = 40", tail, count=1))
    runner = CliRunner()
    plain = runner.invoke(app, ["--project", str(ws.root), "eval", "--json"])
    assert plain.exit_code == 0, plain.output
    report = json.loads(plain.stdout)
    assert list(report["baselines"]) == ["popularity"] and report["vs_best_baseline"]["baseline"] == "popularity"

    asked = runner.invoke(app, ["--project", str(ws.root), "eval", "--baselines", "popularity,sasrec", "--json"])
    assert asked.exit_code == 0, asked.output
    assert "fit-baseline: missing" in asked.stderr and "fit-retriever" not in asked.stderr.split("fit-baseline")[0]
    report = json.loads(asked.stdout)
    assert list(report["baselines"]) == ["popularity", "sasrec"]
    assert set(report["baselines"]["sasrec"]) == set(report["metrics"])
    sasrec = report["baseline_models"]["sasrec"]
    assert sasrec["loss"] == "full" and sasrec["users_per_s"] > 0 and sasrec["steps"] > 0
    best = report["vs_best_baseline"]
    ndcg = max(report["baselines"].values(), key=lambda m: m["ndcg@10"])["ndcg@10"]
    assert best["by"] == "ndcg@10" and best["ratio"]["ndcg@10"] == pytest.approx(report["metrics"]["ndcg@10"] / ndcg, abs=1e-3)

    default = runner.invoke(app, ["--project", str(ws.root), "eval", "--force", "--json"])
    assert list(json.loads(default.stdout)["baselines"]) == ["popularity", "sasrec"]  # trained: it joins by itself
