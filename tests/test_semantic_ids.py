import polars as pl
import pytest
import torch
from test_tokenizer_fit import fake_model, small_workspace  # noqa: F401  (fixtures)

from semrec.errors import SemrecError
from semrec.tokenizer.fit import load_tokenizer
from semrec.tokenizer.ids import collision_tokens, show_item, tokenize_new_items
from semrec.artifacts import EMBEDDINGS, ITEMS, SEMANTIC_IDS


def test_collision_tokens_order_by_distance_then_item():
    codes = torch.tensor([[1, 2], [0, 0], [1, 2], [1, 2], [0, 0], [3, 3]])
    gaps = torch.tensor([0.5, 0.1, 0.2, 0.5, 0.1, 0.0])
    # group (1, 2): item 2 is closest, then items 0 and 3 tie on distance and go by id
    assert collision_tokens(codes, gaps).tolist() == [1, 0, 0, 2, 1, 0]


def id_tuples(frame: pl.DataFrame) -> list[tuple]:
    return [tuple(row) for row in frame.drop("item").iter_rows()]


@pytest.mark.parametrize("kind", ["rqvae", "rqkmeans"])
def test_collision_tokens_make_every_id_unique(small_workspace, kind):
    ws = small_workspace(kind, **{"tokenizer.codebook_size": 4, "tokenizer.levels": 2})  # 16 tuples for 300 items
    figures = ws.ensure("tokenize")
    ids = pl.read_parquet(ws.path(SEMANTIC_IDS))
    assert ids.columns == ["item", "code_1", "code_2", "dedup"]
    assert ids["item"].to_list() == list(range(300))
    assert len(set(id_tuples(ids))) == 300
    assert figures["collision_rate"] > 0.9 and figures["max_dedup"] == figures["largest_collision_group"] - 1
    first_of_group = ids.group_by("code_1", "code_2").agg(pl.col("dedup").min())
    assert set(first_of_group["dedup"].to_list()) == {0}
    assert "nmi" not in figures  # no tags.parquet in an rqvae project that never ran `tag`


def test_tokenize_reports_tag_agreement_when_tags_exist(small_workspace):
    ws = small_workspace("hidvae")
    figures = ws.ensure("tokenize")
    assert len(figures["nmi"]) == 3
    assert all(0.0 <= v <= 1.0 for v in figures["nmi"])
    assert figures["nmi"][0] > 0.2


@pytest.mark.slow
def test_same_ids_on_every_run(small_workspace):
    a = small_workspace("rqvae")
    b = small_workspace("rqvae")
    a.ensure("tokenize")
    b.ensure("tokenize")
    assert pl.read_parquet(a.path(SEMANTIC_IDS)).equals(pl.read_parquet(b.path(SEMANTIC_IDS)))
    a.ensure("tokenize", force=True)
    assert pl.read_parquet(a.path(SEMANTIC_IDS)).equals(pl.read_parquet(b.path(SEMANTIC_IDS)))


def test_cold_start_items_keep_existing_ids_unchanged(small_workspace, tmp_path):
    ws = small_workspace("rqvae")
    ws.ensure("tokenize")
    before = pl.read_parquet(ws.path(SEMANTIC_IDS))
    items = pl.read_parquet(ws.path(ITEMS))
    # two new items: one a copy of an existing item's text (so its tuple is taken), one new
    copy = items.row(0, named=True)
    new = pl.DataFrame(
        {
            "item_key": ["NEW-1", "NEW-2"],
            "title": [copy["title"], "Completely different garden hose"],
            "text": [copy["text"], "Completely different garden hose, 50 ft"],
        }
    )
    path = tmp_path / "new.csv"
    new.write_csv(path)
    result = tokenize_new_items(ws, path)

    after = pl.read_parquet(ws.path(SEMANTIC_IDS))
    assert after.head(300).equals(before)
    assert after.height == 302 and result["added"] == 2
    assert len(set(id_tuples(after))) == 302
    copied = after.filter(pl.col("item") == 300).row(0, named=True)
    original = before.filter(pl.col("item") == 0).row(0, named=True)
    same_tuple = before.filter(
        (pl.col("code_1") == original["code_1"]) & (pl.col("code_2") == original["code_2"]) & (pl.col("code_3") == original["code_3"])
    )
    assert [copied[c] for c in ("code_1", "code_2", "code_3")] == [original[c] for c in ("code_1", "code_2", "code_3")]
    assert copied["dedup"] == same_tuple["dedup"].max() + 1
    assert [r["item_key"] for r in result["items"]] == ["NEW-1", "NEW-2"]

    all_items = pl.read_parquet(ws.path(ITEMS))
    assert all_items["item"].to_list() == list(range(302))
    assert all_items.tail(2)["item_key"].to_list() == ["NEW-1", "NEW-2"]
    from safetensors import safe_open

    with safe_open(str(ws.path(EMBEDDINGS)), framework="pt") as f:
        assert f.get_tensor("embeddings").shape == (302, 384)
    # nothing downstream is stale merely because items were added
    for stage in ("download", "embed", "fit-tokenizer", "tokenize"):
        assert ws.state(stage).state == "done", (stage, ws.state(stage).reason)
    # and the loaded tokenizer still gives the existing items their codes
    from semrec.embed import load_embeddings

    codes = load_tokenizer(ws).assign(load_embeddings(ws)[0])[0]
    assert codes[:300].tolist() == [list(row) for row in before.select("code_1", "code_2", "code_3").rows()]


def test_cold_start_rejects_existing_keys(small_workspace, tmp_path):
    ws = small_workspace("rqkmeans")
    ws.ensure("tokenize")
    key = pl.read_parquet(ws.path(ITEMS))["item_key"][0]
    path = tmp_path / "new.jsonl"
    pl.DataFrame({"item_key": [key], "title": ["x"], "text": ["x"]}).write_ndjson(path)
    with pytest.raises(SemrecError, match="already in the catalogue"):
        tokenize_new_items(ws, path)
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"item_key": ["Z"], "title": ["x"]}).write_parquet(bad)
    with pytest.raises(SemrecError, match="text"):
        tokenize_new_items(ws, bad)


def test_show_item_gives_id_tags_and_neighbours(small_workspace):
    ws = small_workspace("hidvae")
    ws.ensure("tokenize")
    key = pl.read_parquet(ws.path(ITEMS))["item_key"][5]
    shown = show_item(ws, key)
    ids = pl.read_parquet(ws.path(SEMANTIC_IDS)).filter(pl.col("item") == 5).row(0)
    assert shown["semantic_id"] == list(ids[1:])
    assert len(shown["tags"]) == 3
    first = pl.read_parquet(ws.path(SEMANTIC_IDS)).filter(pl.col("code_1") == ids[1])
    assert shown["sharing_first_1"]["count"] == first.height - 1
    assert shown["sharing_first_2"]["count"] <= shown["sharing_first_1"]["count"]
    with pytest.raises(SemrecError, match="no item with item_key"):
        show_item(ws, "NOT-A-KEY")
