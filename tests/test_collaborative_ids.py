"""Semantic IDs from text plus SASRec item embeddings (tokenizer.collaborative_weight)."""

import polars as pl
import pytest
import torch
from test_tokenizer_fit import DIM, SMALL, fake_model  # noqa: F401  (fixture)

from semrec.artifacts import ITEMS, SASREC, SEMANTIC_IDS, SPLITS
from semrec.baselines.fit import MODEL_FILE, load_sasrec
from semrec.baselines.sasrec import SASRec, SASRecConfig
from semrec.embed import load_embeddings
from semrec.errors import SemrecError
from semrec.io import write_weights
from semrec.pipeline import STAGES, stage_settings
from semrec.project import preset_settings
from semrec.tokenizer.fit import load_tokenizer
from semrec.tokenizer.ids import tokenize_new_items
from semrec.tokenizer.inputs import NEIGHBOURS, borrowed, collaborative_part, tokenizer_inputs, with_collaborative

SASREC_SMALL = {"baselines.sasrec.max_seq_len": 10, "baselines.sasrec.d_model": 32, "baselines.sasrec.dropout": 0.2,
                "baselines.sasrec.train.steps": 40, "baselines.sasrec.eval_every": 20,
                "baselines.sasrec.train.checkpoint_every": 20, "baselines.sasrec.device": "cpu"}


@pytest.fixture
def collaborative_workspace(make_workspace, fake_model):  # noqa: F811
    def make(weight: float, **overrides):
        return make_workspace("demo", **{**SMALL, **SASREC_SMALL, "tokenizer.kind": "rqkmeans",
                                         "tokenizer.collaborative_weight": weight, **overrides})

    return make


def trained_in_splits(ws) -> torch.Tensor:
    train = pl.read_parquet(ws.path(SPLITS), columns=["train"])["train"].explode()
    return torch.bincount(torch.tensor(train.to_list()), minlength=300) > 0


def save_sasrec(ws, item_weights: torch.Tensor) -> None:
    model = SASRec(SASRecConfig(n_items=len(item_weights), d_model=item_weights.shape[1]))
    with torch.no_grad():
        model.item.weight[: len(item_weights)] = item_weights
    write_weights(ws.path(SASREC) / MODEL_FILE, model.state_dict(), {"config": model.cfg.to_dict()})


def test_text_only_by_default_and_the_setting_stays_out_of_earlier_fingerprints():
    settings = preset_settings("beauty")
    assert settings.tokenizer.collaborative_weight == 0
    assert "tokenizer.collaborative_weight" not in stage_settings(settings, "fit-tokenizer")
    assert "fit-baseline" not in STAGES["fit-tokenizer"].upstream(settings)
    settings.tokenizer.collaborative_weight = 0.5
    assert stage_settings(settings, "fit-tokenizer")["tokenizer.collaborative_weight"] == 0.5
    assert "fit-baseline" in STAGES["fit-tokenizer"].upstream(settings)


def test_an_item_without_its_own_vector_borrows_that_of_the_items_whose_text_is_nearest():
    groups = torch.eye(3, 16)  # three text directions
    text = groups.repeat_interleave(NEIGHBOURS + 2, 0) + 0.01 * torch.randn(3 * (NEIGHBOURS + 2), 16,
                                                                            generator=torch.Generator().manual_seed(0))
    collaborative = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    vectors = collaborative.repeat_interleave(NEIGHBOURS + 2, 0)
    known = torch.ones(len(text), dtype=torch.bool)
    known[[0, NEIGHBOURS + 2, 2 * (NEIGHBOURS + 2)]] = False  # the first item of each group
    filled = borrowed(text, torch.where(known[:, None], vectors, 0.0), known)
    torch.testing.assert_close(filled, vectors)


def test_collaborative_part_is_unit_length_times_the_weight_and_names_what_is_wrong(collaborative_workspace):
    ws = collaborative_workspace(0.5)
    ws.ensure("download")
    text = torch.nn.functional.normalize(torch.randn(300, 24, generator=torch.Generator().manual_seed(0)), dim=1)
    item_weights = torch.randn(300, 32, generator=torch.Generator().manual_seed(1))
    save_sasrec(ws, item_weights)
    part = collaborative_part(ws, text)
    trained = trained_in_splits(ws)
    torch.testing.assert_close(part[trained], 0.5 * torch.nn.functional.normalize(item_weights[trained], dim=1))
    torch.testing.assert_close(part.norm(dim=1), torch.full((300,), 0.5))
    assert torch.equal(with_collaborative(ws, text), torch.cat([text, part], 1))

    save_sasrec(ws, item_weights[:280])  # the last 20 items came after SASRec: they borrow
    part = collaborative_part(ws, text)
    torch.testing.assert_close(part[:280][trained[:280]],
                               0.5 * torch.nn.functional.normalize(item_weights[:280][trained[:280]], dim=1))
    torch.testing.assert_close(part[280:].norm(dim=1), torch.full((20,), 0.5))

    save_sasrec(ws, item_weights)
    with pytest.raises(SemrecError, match="knows 300 items.*have 250"):
        collaborative_part(ws, text[:250])
    save_sasrec(ws, torch.where(torch.arange(300)[:, None] == 7, float("nan"), item_weights))
    with pytest.raises(SemrecError, match="(?s)NaN or infinite.*fit-baseline --force"):
        collaborative_part(ws, text)


@pytest.mark.slow
def test_fit_tokenizer_trains_sasrec_first_and_its_codes_follow_the_sasrec_embeddings(collaborative_workspace):
    ws = collaborative_workspace(10.0)  # the collaborative part outweighs the text
    ws.ensure("tokenize")
    assert ws.state("fit-baseline").state == "done"  # run as an upstream stage
    inputs, _ = tokenizer_inputs(ws)
    assert inputs.shape == (300, DIM + 32) and load_tokenizer(ws).config["embedding_dim"] == DIM + 32
    torch.testing.assert_close(inputs[:, :DIM], load_embeddings(ws)[0], rtol=0, atol=0)

    text_only = collaborative_workspace(0.0)
    text_only.ensure("tokenize")
    sasrec = torch.nn.functional.normalize(load_sasrec(ws, torch.device("cpu"))[0].item.weight.detach()[:300], dim=1)
    similarity = sasrec @ sasrec.T - 2 * torch.eye(300)
    nearest = similarity.argmax(1)  # each item's nearest neighbour by its SASRec embedding

    def shared_first_code(w) -> float:
        first = torch.tensor(pl.read_parquet(w.path(SEMANTIC_IDS)).sort("item")["code_1"].to_list())
        return float((first == first[nearest]).float().mean())

    assert shared_first_code(ws) > 2 * shared_first_code(text_only)

    ws.project.settings.baselines.sasrec.dropout = 0.1  # another SASRec: the codes are out of date
    assert ws.state("fit-tokenizer").state == "stale"


@pytest.mark.slow
def test_new_items_borrow_a_collaborative_part_and_existing_ids_stay(collaborative_workspace, tmp_path):
    ws = collaborative_workspace(1.0)
    ws.ensure("tokenize")
    before = pl.read_parquet(ws.path(SEMANTIC_IDS))
    copy = pl.read_parquet(ws.path(ITEMS)).row(0, named=True)
    path = tmp_path / "new.csv"
    pl.DataFrame({"item_key": ["NEW-1", "NEW-2"], "title": [copy["title"], "Garden hose"],
                  "text": [copy["text"], "Garden hose, 50 ft"]}).write_csv(path)
    result = tokenize_new_items(ws, path)
    assert result["added"] == 2
    assert pl.read_parquet(ws.path(SEMANTIC_IDS)).head(300).equals(before)
    inputs, _ = tokenizer_inputs(ws)  # the new items are not in SASRec's catalogue: they borrow
    torch.testing.assert_close(inputs[300:, DIM:].norm(dim=1), torch.ones(2))
    codes = load_tokenizer(ws).assign(inputs[300:])[0]
    assert [item["semantic_id"][:3] for item in result["items"]] == codes.tolist()
