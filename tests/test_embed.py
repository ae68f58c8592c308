"""`semrec embed`: the embeddings artifact, the (model, text) cache, settings mismatches, bad models."""

import json
import zlib

import polars as pl
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from semrec import embed
from semrec.errors import SemrecError
from semrec.project import render_toml
from semrec.settings import EmbedSettings
from semrec.artifacts import EMBEDDINGS, ITEMS
from semrec.io import write_parquet
from semrec.workspace import StageRun

PRODUCTS = [
    "red matte lipstick", "nude lip gloss", "volumizing black mascara", "waterproof eyeliner pencil",
    "argan oil shampoo", "keratin conditioner", "ceramic hair straightener", "ionic hair dryer",
    "vitamin c face serum", "hyaluronic acid moisturizer", "clay face mask", "mineral sunscreen spf 50",
    "rose eau de parfum", "citrus eau de toilette", "lavender bath salts", "shea body butter",
    "nail polish top coat", "cuticle oil pen", "bamboo makeup brush set", "beauty sponge blender",
    "charcoal peel off mask", "retinol night cream", "tea tree face wash", "volumizing dry shampoo",
]


def fake_encode(calls: list):
    """A deterministic stand-in for the model (hashed bag of words, 32 dims) that records each call."""

    def encode(settings, texts, reporter=None, *, normalize=None):
        calls.append(list(texts))
        rows = [torch.zeros(32) + 0.01 for _ in texts]
        for row, text in zip(rows, texts):
            for word in text.lower().split():
                row[zlib.crc32(word.encode()) % 32] += 1.0
        x = torch.stack(rows) if rows else torch.zeros(0, 32)
        normalize = settings.normalize if normalize is None else normalize
        return torch.nn.functional.normalize(x, dim=1) if normalize else x

    return encode


@pytest.fixture
def model_calls(monkeypatch) -> list:
    calls: list = []
    monkeypatch.setattr(embed, "encode_texts", fake_encode(calls))
    monkeypatch.setattr(embed, "load_model", lambda settings: None)
    return calls


def write_items(ws, titles: list[str]) -> None:
    n = len(titles)
    frame = pl.DataFrame(
        {
            "item": list(range(n)),
            "item_key": [f"K{i:03d}" for i in range(n)],
            "title": titles,
            "brand": ["Acme" if i % 2 else None for i in range(n)],
            "price": [9.5 + i for i in range(n)],
            "category_path": [["Beauty", "Makeup"] for _ in range(n)],
            "text": [f"{t}. Brand: Acme." for t in titles],
        },
        schema_overrides={"item": pl.Int64},
    )
    write_parquet(frame, ws.path(ITEMS))


def run(ws, fresh: bool = False) -> dict:
    return embed.run_embed(ws, StageRun("embed", "test", fresh=fresh))


@pytest.mark.slow
def test_default_model_embeds_each_item_in_its_row_and_the_second_run_reads_the_cache(make_workspace, monkeypatch):
    ws = make_workspace("demo")
    write_items(ws, PRODUCTS)
    figures = run(ws)
    assert figures["items"] == len(PRODUCTS) and figures["encoded"] == len(PRODUCTS) and figures["cached"] == 0
    vectors, metadata = embed.load_embeddings(ws)
    assert vectors.shape == (len(PRODUCTS), 384) and vectors.dtype == torch.float32
    assert metadata["model"] == "all-MiniLM-L6-v2" and metadata["dim"] == "384"
    assert metadata["template"] == "" and metadata["normalize"] == "true"
    assert torch.allclose(vectors.norm(dim=1), torch.ones(len(PRODUCTS)), atol=1e-5)
    # batching sorts texts by length: row i must still be item i's text
    single = embed.encode_texts(ws.settings.embed, [f"{PRODUCTS[5]}. Brand: Acme."])
    assert torch.allclose(vectors[5], single[0], atol=1e-5)
    assert not torch.allclose(vectors[4], single[0], atol=1e-3)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was called although every text is cached")

    monkeypatch.setattr(embed, "encode_texts", no_model)
    monkeypatch.setattr(embed, "load_model", no_model)
    again = run(ws)
    assert again["encoded"] == 0 and again["cached"] == len(PRODUCTS)
    assert torch.equal(embed.load_embeddings(ws)[0], vectors)


def test_only_new_or_changed_texts_are_encoded_after_the_catalogue_changes(make_workspace, model_calls):
    ws = make_workspace("demo")
    write_items(ws, PRODUCTS[:20])
    assert run(ws)["encoded"] == 20
    changed = PRODUCTS[:20] + PRODUCTS[20:]
    changed[3] = "waterproof eyeliner pencil, brown"
    write_items(ws, changed)
    figures = run(ws)
    assert figures["encoded"] == 5 and figures["cached"] == 19
    assert sorted(model_calls[-1]) == sorted(f"{t}. Brand: Acme." for t in [changed[3], *PRODUCTS[20:]])
    vectors, _ = embed.load_embeddings(ws)
    assert vectors.shape[0] == len(changed)


def test_force_reencodes_and_duplicate_texts_are_encoded_once(make_workspace, model_calls):
    ws = make_workspace("demo")
    write_items(ws, ["same thing"] * 4 + ["other thing"])
    assert run(ws)["encoded"] == 2
    assert run(ws, fresh=True)["encoded"] == 2
    assert len(model_calls) == 2


def test_normalisation_is_a_setting_and_both_settings_share_one_cache(make_workspace, model_calls):
    ws = make_workspace("demo", **{"embed.normalize": False})
    write_items(ws, PRODUCTS[:6])
    run(ws)
    raw, metadata = embed.load_embeddings(ws)
    assert metadata["normalize"] == "false" and not torch.allclose(raw.norm(dim=1), torch.ones(6))
    ws.settings.embed.normalize = True
    assert run(ws)["encoded"] == 0
    unit, _ = embed.load_embeddings(ws)
    assert torch.allclose(unit, torch.nn.functional.normalize(raw, dim=1))


@pytest.mark.parametrize(
    "key, value",
    [("model", "sentence-t5-base"), ("template", "{title}"), ("normalize", False)],
)
def test_a_later_stage_is_told_when_the_embeddings_do_not_match_the_project(make_workspace, model_calls, key, value):
    ws = make_workspace("demo")
    write_items(ws, PRODUCTS[:4])
    run(ws)
    setattr(ws.settings.embed, key, value)
    with pytest.raises(SemrecError) as error:
        embed.load_embeddings(ws)
    assert f"embed.{key}" in error.value.message and "semrec embed" in error.value.hint


def test_embeddings_of_another_catalogue_size_are_refused(make_workspace, model_calls):
    ws = make_workspace("demo")
    write_items(ws, PRODUCTS[:4])
    run(ws)
    write_items(ws, PRODUCTS[:6])
    with pytest.raises(SemrecError, match="4 rows but .* has 6 items"):
        embed.load_embeddings(ws)


def test_missing_embeddings_say_to_run_embed(make_workspace):
    with pytest.raises(SemrecError, match="no item embeddings") as error:
        embed.load_embeddings(make_workspace("demo"))
    assert "semrec embed" in error.value.hint


@pytest.mark.parametrize("name", ["no-such-model-xyz", "BAAI/no-such-bge"])
def test_a_model_missing_offline_names_itself_and_how_to_use_a_local_copy(name):
    with pytest.raises(SemrecError) as error:
        embed.load_model(EmbedSettings(model=name, device="cpu"))
    assert repr(name) in error.value.message and "offline" in error.value.message
    assert "embed.model" in error.value.hint and "--local-dir" in error.value.hint


def test_a_model_path_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(SemrecError, match="nothing there"):
        embed.load_model(EmbedSettings(model=str(tmp_path / "models" / "bge"), device="cpu"))


def test_a_local_folder_model_gets_its_own_cache_identity(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "modules.json").write_text("[]")
    _, before = embed.model_source(str(folder))
    (folder / "modules.json").write_text("[ ]")
    _, after = embed.model_source(str(folder))
    assert before.startswith("path:") and before != after


def test_item_texts_formats_the_template_over_the_item_columns():
    items = pl.DataFrame(
        {"title": ["Lipstick", "Serum"], "brand": ["Acme", None], "price": [9.5, None], "category_path": [["Makeup", "Lips"], []]}
    )
    texts = embed.item_texts(items, "{title}. Brand: {brand}. Categories: {category_path}. Price: {price}")
    assert texts == ["Lipstick. Brand: Acme. Categories: Makeup, Lips. Price: 9.5", "Serum. Brand: . Categories: . Price: "]
    with pytest.raises(SemrecError, match="'colour'") as error:
        embed.item_texts(items, "{title} in {colour}")
    assert "title, brand, price, category_path" in error.value.hint
    with pytest.raises(SemrecError, match="no `text` column"):
        embed.item_texts(items, "")
    with pytest.raises(SemrecError, match="without a column name"):
        embed.item_texts(items, "{} and {}")


def test_semrec_embed_command_on_the_demo(make_workspace, model_calls, monkeypatch):
    from semrec.cli import app

    ws = make_workspace("demo", **{"data.demo_items": 300, "data.demo_users": 400})
    ws.project.path.write_text(render_toml(ws.settings))
    monkeypatch.chdir(ws.root)
    result = CliRunner().invoke(app, ["embed", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["encoded"] == figures["items"] > 0 and figures["dim"] == 32
    with safe_open(str(ws.path(EMBEDDINGS)), framework="pt") as f:
        assert f.get_tensor("embeddings").shape[0] == pl.read_parquet(ws.path(ITEMS)).height
