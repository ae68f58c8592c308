"""A tokenizer kind is one class behind `semrec.tokenizer.base.TokenizerKind` and one registry entry.

`ToyTokenizer` below is registered from this test alone and runs through fit-tokenizer and
tokenize like the built-in kinds; the fingerprint of fit-tokenizer holds only what the active
kind reads.
"""

import json

import polars as pl
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_tokenizer_fit import fake_model, small_workspace  # noqa: F401  (fixtures)

from semrec.artifacts import SEMANTIC_IDS, TOKENIZER
from semrec.embed import load_embeddings
from semrec.errors import SemrecError
from semrec.registry import TOKENIZERS, Entry
from semrec.tokenizer.base import FitInputs
from semrec.tokenizer.fit import load_tokenizer, read_tokenizer

SHARED_KEYS = {"tokenizer.kind", "tokenizer.levels", "tokenizer.codebook_size", "tokenizer.kmeans_iters", "project.seed"}


class ToyTokenizer:
    """code_l = argmax over the K columns of x @ P_l, P_l a fixed random (d, K) projection per level."""

    def __init__(self, config: dict, projections: torch.Tensor):
        self.config, self.projections = config, projections  # (L, d, K)

    @classmethod
    def fit(cls, inputs: FitInputs) -> tuple["ToyTokenizer", dict]:
        config = inputs.config
        generator = torch.Generator().manual_seed(inputs.seed)
        projections = torch.randn(config["levels"], config["embedding_dim"], config["codebook_size"], generator=generator)
        return cls(dict(config), projections), {"steps": 0}

    def assign(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores = torch.einsum("nd,ldk->nlk", embeddings.float(), self.projections)  # (N, L, K)
        top = scores.topk(2, dim=-1).values  # (N, L, 2)
        gaps = -(top[..., 0] - top[..., 1]).sum(-1)  # a clear winner at every level comes first
        return scores.argmax(-1), gaps, torch.zeros(embeddings.shape[0])

    def save(self, folder) -> None:
        save_file({"projections": self.projections.contiguous()}, str(folder / "projections.safetensors"))

    @classmethod
    def load(cls, folder, config: dict, device="cpu") -> "ToyTokenizer":
        return cls(config, load_file(str(folder / "projections.safetensors"))["projections"].to(device))


@pytest.fixture
def toyhash(monkeypatch):
    monkeypatch.setitem(TOKENIZERS, "toyhash", Entry(f"{__name__}:ToyTokenizer"))


@pytest.mark.slow
def test_a_registered_kind_runs_through_fit_tokenizer_and_tokenize(small_workspace, toyhash):
    ws = small_workspace("toyhash")
    figures = ws.ensure("tokenize")
    assert figures["kind"] == "toyhash"
    ids = pl.read_parquet(ws.path(SEMANTIC_IDS))
    assert ids["item"].to_list() == list(range(300))
    assert len(set(ids.drop("item").iter_rows())) == 300  # codes + collision token: unique per item
    config = json.loads((ws.path(TOKENIZER) / "config.json").read_text())
    assert set(config["settings"]) == SHARED_KEYS  # it reads no sub-table, so none is in its fingerprint
    tokenizer = load_tokenizer(ws)
    assert isinstance(tokenizer, ToyTokenizer)
    codes = tokenizer.assign(load_embeddings(ws)[0])[0]
    assert codes.tolist() == [list(row) for row in ids.select("code_1", "code_2", "code_3").iter_rows()]


def test_an_unknown_kind_in_config_json_is_a_clear_error(small_workspace, toyhash, monkeypatch):
    ws = small_workspace("toyhash")
    ws.ensure("fit-tokenizer")
    monkeypatch.delitem(TOKENIZERS, "toyhash")
    with pytest.raises(SemrecError, match="unknown tokenizer kind 'toyhash'"):
        read_tokenizer(ws.path(TOKENIZER))


@pytest.mark.parametrize(
    ("kind", "other_kinds_key", "own_key"),
    [("rqvae", ("hidvae", "focal_gamma", 0.5), ("rqvae", "beta", 0.5)),
     ("rqkmeans", ("rqvae", "beta", 0.5), ("rqkmeans", "balanced", True))],
)
def test_only_the_active_kinds_sub_tables_make_fit_tokenizer_stale(small_workspace, kind, other_kinds_key, own_key):
    ws = small_workspace(kind)
    ws.ensure("fit-tokenizer")
    table, key, value = other_kinds_key
    setattr(getattr(ws.settings.tokenizer, table), key, value)
    assert ws.state("fit-tokenizer").state == "done"
    load_tokenizer(ws)  # still accepted
    table, key, value = own_key
    setattr(getattr(ws.settings.tokenizer, table), key, value)
    assert ws.state("fit-tokenizer").state == "stale"
    with pytest.raises(SemrecError, match=f"tokenizer.{table}"):
        load_tokenizer(ws)
