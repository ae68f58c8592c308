"""The fit-tokenizer stage over a small demo catalogue.

Texts are embedded by a fake sentence model (hashed bag of words, 384 dimensions): similar texts
get similar vectors, as with a real model, but in milliseconds and without loading weights.
"""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from semrec.errors import SemrecError, StageFailed
from semrec.artifacts import EMBEDDINGS, TAGS, TOKENIZER
from semrec.tokenizer import fit
from semrec.tokenizer.fit import fit_tokenizer, load_tokenizer, read_tokenizer, save_tokenizer
from semrec.tokenizer.rqvae import TokenizerTask
from semrec.workspace import StageRun

DIM = 384
SMALL = {
    "data.demo_items": 300,
    "data.demo_users": 400,
    "tokenizer.levels": 3,
    "tokenizer.codebook_size": 16,
    "tokenizer.rqvae.hidden_dims": [64],
    "tokenizer.rqvae.latent_dim": 8,
    "tokenizer.train.steps": 60,
    "tokenizer.train.batch_size": 128,
    "tokenizer.train.warmup_steps": 5,
    "tokenizer.train.checkpoint_every": 20,
    "tokenizer.kmeans_iters": 10,
    "tokenizer.device": "cpu",
    "embed.device": "cpu",
}


def _word_vector(word: str) -> torch.Tensor:
    seed = int.from_bytes(hashlib.blake2b(word.lower().encode(), digest_size=8).digest(), "little")
    return torch.randn(DIM, generator=torch.Generator().manual_seed(seed % (2**63)))


def fake_encode_texts(settings, texts, reporter=None, *, normalize=None):
    normalize = settings.normalize if normalize is None else normalize
    rows = [torch.stack([_word_vector(w) for w in (t.split() or ["<empty>"])]).sum(0) for t in texts]
    vectors = torch.stack(rows) if rows else torch.zeros(0, DIM)
    return torch.nn.functional.normalize(vectors, dim=1) if normalize else vectors


@pytest.fixture
def fake_model(monkeypatch):
    import semrec.embed

    monkeypatch.setattr(semrec.embed, "encode_texts", fake_encode_texts)


@pytest.fixture
def small_workspace(make_workspace, fake_model):
    def make(kind: str = "rqvae", **overrides):
        return make_workspace("demo", **{**SMALL, "tokenizer.kind": kind, **overrides})

    return make


def fitted(ws) -> dict:
    return ws.ensure("fit-tokenizer")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rqvae", "hidvae", "rqkmeans"])
def test_fit_writes_model_config_and_metrics_without_collapse(small_workspace, kind):
    ws = small_workspace(kind, **{"tokenizer.train.steps": 200 if kind == "hidvae" else 60})
    figures = fitted(ws)
    folder = ws.path(TOKENIZER)
    config = json.loads((folder / "config.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert config["kind"] == kind and config["levels"] == 3 and config["codebook_size"] == 16
    assert config["embedding_dim"] == DIM and config["embedding_model"] == ws.settings.embed.model
    assert (folder / "model.safetensors").exists() and "model" in config  # every kind is rebuilt from config["model"]
    if kind == "rqkmeans":  # its codebooks are the buffers of an nn.Module, saved through its state_dict
        assert set(load_file(str(folder / "model.safetensors"))) == {"codebook_0", "codebook_1", "codebook_2"}
    for key in ("reconstruction_error", "usage", "perplexity", "collision_rate", "fit_seconds"):
        assert key in metrics, key
    # no collapse: most codes of every level are in use on 300 items and 16 codes, none dominates
    assert min(metrics["usage"]) >= 0.75, metrics["usage"]
    assert min(metrics["perplexity"]) >= 4, metrics["perplexity"]
    assert figures["collision_rate"] == pytest.approx(metrics["collision_rate"], abs=1e-4)
    if kind == "hidvae":
        import polars as pl

        tags = pl.read_parquet(ws.path(TAGS))
        majority = tags["tag_1"].value_counts()["count"].max() / tags.height
        assert len(metrics["tag_accuracy"]) == 3
        assert metrics["tag_accuracy"][0] > max(0.6, majority)  # the level-1 head learned the top tags
    if kind != "rqkmeans":
        assert metrics["steps"] == config["settings"]["tokenizer.train"]["steps"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rqvae", "rqkmeans"])
def test_same_seed_gives_same_ids_also_after_save_and_load(small_workspace, kind, tmp_path):
    from semrec.embed import load_embeddings

    ws = small_workspace(kind)
    ws.ensure("embed")
    embeddings, _ = load_embeddings(ws)
    first, _ = fit_tokenizer(ws.settings, embeddings, None, tmp_path / "a", "fp", resume=False)
    second, _ = fit_tokenizer(ws.settings, embeddings, None, tmp_path / "b", "fp", resume=False)
    codes = first.assign(embeddings)[0]
    assert torch.equal(codes, second.assign(embeddings)[0])
    save_tokenizer(first, tmp_path)
    loaded = read_tokenizer(tmp_path)
    assert torch.equal(codes, loaded.assign(embeddings)[0])
    assert torch.equal(first.assign(embeddings)[1], loaded.assign(embeddings)[1])


@pytest.mark.slow
@pytest.mark.parametrize("grad_mode", ["rotation", "gumbel"])
def test_resume_matches_uninterrupted_run(small_workspace, monkeypatch, grad_mode):
    straight = small_workspace("rqvae", **{"tokenizer.rqvae.grad_mode": grad_mode})
    fitted(straight)

    ws = small_workspace("rqvae", **{"tokenizer.rqvae.grad_mode": grad_mode})
    ws.ensure("embed")
    original_batch = TokenizerTask.batch

    def interrupted_batch(self, step):
        if step == 30:  # after the checkpoint of step 20
            raise KeyboardInterrupt
        return original_batch(self, step)

    monkeypatch.setattr(TokenizerTask, "batch", interrupted_batch)
    with pytest.raises(KeyboardInterrupt):
        ws.ensure("fit-tokenizer")
    monkeypatch.setattr(TokenizerTask, "batch", original_batch)
    fitted(ws)
    assert any("resuming" in m for _, m in ws.reporter.messages)
    a = load_file(str(straight.path(TOKENIZER) / "model.safetensors"))
    b = load_file(str(ws.path(TOKENIZER) / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_no_resume_starts_over(small_workspace):
    ws = small_workspace("rqvae")
    fitted(ws)
    ws.ensure("fit-tokenizer", force=True, options={"resume": False})
    assert not any("resuming" in m for _, m in ws.reporter.messages)


def test_missing_embeddings_are_a_clear_error(small_workspace):
    ws = small_workspace("rqvae")
    with pytest.raises(SemrecError, match="semrec embed"):
        fit.run_fit_tokenizer(ws, StageRun("fit-tokenizer", "fp"))


def test_embeddings_of_another_model_are_a_clear_error(small_workspace):
    ws = small_workspace("rqvae")
    ws.ensure("embed")
    path = ws.path(EMBEDDINGS)
    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={"model": "some-other-model", "template": "", "normalize": "true"})
    with pytest.raises(SemrecError, match="embed.model"):
        fit.run_fit_tokenizer(ws, StageRun("fit-tokenizer", "fp"))


def test_hidvae_without_tags_says_to_run_tag(small_workspace):
    ws = small_workspace("hidvae")
    ws.ensure("embed")
    assert not ws.path(TAGS).exists()
    with pytest.raises(SemrecError, match="semrec tag"):
        fit.run_fit_tokenizer(ws, StageRun("fit-tokenizer", "fp"))


def test_codebook_larger_than_the_catalogue_is_a_clear_error(small_workspace):
    ws = small_workspace("rqkmeans", **{"tokenizer.codebook_size": 512})
    with pytest.raises(SemrecError, match="codebook_size = 512 is larger than the number of items"):
        fitted(ws)


def test_nan_loss_stops_with_the_loss_part_and_step(small_workspace, monkeypatch):
    ws = small_workspace("rqvae")
    original_loss = TokenizerTask.loss

    def poisoned(self, index):
        loss, parts = original_loss(self, index)
        if int(self.model.quantizer.levels[0].steps) > 25:
            parts["recon"] = torch.tensor(float("nan"))
            loss = loss * float("nan")
        return loss, parts

    monkeypatch.setattr(TokenizerTask, "loss", poisoned)
    with pytest.raises(StageFailed, match=r"recon.*step 2[5-7]"):
        fitted(ws)
    assert (ws.path(TOKENIZER) / "checkpoints" / "last.safetensors").exists()


def test_loading_under_a_different_config_names_the_mismatch(small_workspace):
    ws = small_workspace("rqvae")
    fitted(ws)
    ws.settings.tokenizer.codebook_size = 32
    with pytest.raises(SemrecError, match="tokenizer.codebook_size = 16"):
        load_tokenizer(ws)
    ws.settings.tokenizer.codebook_size = 16
    config_path = ws.path(TOKENIZER) / "config.json"
    config = json.loads(config_path.read_text())
    config["settings"]["tokenizer.collaborative_weight"] = 1.0  # fitted with a setting that is now off
    config_path.write_text(json.dumps(config))
    with pytest.raises(SemrecError, match="tokenizer.collaborative_weight = 1.0, but .* says 'off'"):
        load_tokenizer(ws)
    del config["settings"]["tokenizer.collaborative_weight"]
    config["model"]["latent_dim"] = 12
    config_path.write_text(json.dumps(config))
    with pytest.raises(SemrecError, match="shape"):
        read_tokenizer(ws.path(TOKENIZER))
