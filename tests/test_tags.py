"""`semrec tag` from metadata and the clustering fallback: valid trees, fillers, rare tags, --show."""

import json

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from semrec import embed
from semrec.errors import SemrecError
from semrec.project import render_toml
from semrec.tags import SEPARATOR, source_columns, tag_columns, tag_label, tree_violations
from semrec.tags.cluster import distinctive_words, fill_by_clustering, title_words
from semrec.tags.metadata import category_levels, fill_gaps, merge_rare
from semrec.tags.stage import run_tag
from semrec.tags.table import ItemTags, read_item_tags, read_tags
from semrec.artifacts import ITEMS, TAGS
from semrec.io import write_parquet
from semrec.workspace import StageRun


pytestmark = pytest.mark.usefixtures("no_sentence_model")


def write_items(ws, rows: list[tuple[str, list[str]]]) -> None:
    frame = pl.DataFrame(
        {
            "item": list(range(len(rows))),
            "item_key": [f"K{i:03d}" for i in range(len(rows))],
            "title": [title for title, _ in rows],
            "text": [title for title, _ in rows],
            "category_path": [path for _, path in rows],
        },
        schema_overrides={"item": pl.Int64, "category_path": pl.List(pl.Utf8)},
    )
    write_parquet(frame, ws.path(ITEMS))


def tag(ws) -> tuple[dict, pl.DataFrame]:
    if ws.settings.tag.source != "metadata":
        embed.run_embed(ws, StageRun("embed", "test"))
    figures = run_tag(ws, StageRun("tag", "test"))
    return figures, pl.read_parquet(ws.path(TAGS))


def assert_valid(frame: pl.DataFrame, levels: int) -> None:
    assert frame.columns == ["item", *tag_columns(levels), *source_columns(levels)]
    assert frame["item"].to_list() == list(range(frame.height))
    assert tree_violations(frame, levels) == []


# -- metadata rules -----------------------------------------------------------------------------
def test_category_levels_drop_a_shared_root_and_leave_short_paths_open():
    grid, root = category_levels([["Beauty", "Makeup", "Nails"], ["Beauty", "Skin Care"], [], None], 3, drop_root=True)
    assert root == "Beauty"
    assert grid == [["Makeup", "Nails", None], ["Skin Care", None, None], [None] * 3, [None] * 3]
    grid, root = category_levels([["Beauty", "Makeup"], ["Toys", "Cars"]], 2, drop_root=True)
    assert root is None and grid[1] == ["Toys", "Cars"]
    grid, _ = category_levels([["Beauty", "Makeup"]], 2, drop_root=False)
    assert grid == [["Beauty", "Makeup"]]


def test_rare_tags_merge_into_other_under_their_parent_and_gaps_get_fillers():
    names = [["Makeup", "Nails", "Polish"]] * 3 + [["Makeup", "Lips", "Gloss"], ["Makeup", None, None], ["Hair", "Shampoo", None]]
    names = [list(row) for row in names]
    sources = [["metadata" if n else None for n in row] for row in names]
    merged = merge_rare(names, sources, min_count=2)
    assert merged == [1, 1, 0]  # "Hair" (1 item) and "Makeup > Lips" (1 item)
    assert names[3] == ["Makeup", "Other Makeup", None] and names[5] == ["Other", None, None]
    assert fill_gaps(names, sources) == 3
    assert names[3][2] == "Other Makeup (general)"
    assert names[4] == ["Makeup", "Makeup (general)", "Makeup (general)"]
    assert names[5] == ["Other", "Other (general)", "Other (general)"]
    assert sources[4] == ["metadata", "fallback", "fallback"]


def test_metadata_source_gives_every_item_l_tags_in_a_valid_tree(make_workspace):
    ws = make_workspace("demo", **{"tag.source": "metadata", "tag.min_count": 2})
    write_items(ws, [
        ("OPI red polish", ["Beauty", "Makeup", "Nails", "Nail Polish"]),
        ("Essie pink polish", ["Beauty", "Makeup", "Nails", "Nail Polish"]),
        ("Top coat", ["Beauty", "Makeup", "Nails"]),
        ("Nail file", ["Beauty", "Makeup", "Nails", "Tools"]),
        ("Argan shampoo", ["Beauty", "Hair Care", "Shampoos"]),
        ("Tea tree shampoo", ["Beauty", "Hair Care", "Shampoos"]),
        ("Mystery box", []),
    ])
    figures, frame = tag(ws)
    assert_valid(frame, 3)
    assert figures["root_dropped"] == "Beauty"
    assert frame.row(0, named=True)["tag_3"] == "Makeup > Nails > Nail Polish"
    assert frame.row(3, named=True)["tag_3"] == "Makeup > Nails > Other Nails"
    assert frame.row(6, named=True)["tag_1"] == "Uncategorized"
    assert figures["distinct_tags"] == [3, 3, 5]
    assert figures["coverage"] == [round(6 / 7, 4), round(6 / 7, 4), round(3 / 7, 4)]
    assert figures["sources"]["fallback"] == [1, 1, 4]
    assert "filler tags" in ws.reporter.text()


@pytest.mark.slow
def test_metadata_tags_on_the_real_beauty_data(make_workspace, shared_datasets):
    ws = make_workspace(
        "beauty",
        **{
            "data.source_format": "p5",
            "data.local_dir": str(shared_datasets / "amazon-beauty-2014"),
            "data.offline": True,
            "tag.source": "metadata",
        },
    )
    ws.ensure("download")
    figures = run_tag(ws, StageRun("tag", "test"))
    frame = pl.read_parquet(ws.path(TAGS))
    print(f"\nBeauty metadata tags: distinct per level {figures['distinct_tags']}, coverage {figures['coverage']}, "
          f"rare merged {figures['merged_rare']}, fillers {figures['sources']['fallback']}")
    assert frame.height == 12101
    assert_valid(frame, 3)
    assert figures["root_dropped"] == "Beauty"
    assert sorted(frame["tag_1"].unique()) == ["Bath & Body", "Fragrance", "Hair Care", "Makeup", "Skin Care", "Tools & Accessories"]
    assert figures["coverage"][0] == 1.0 and figures["coverage"][1] > 0.98 and figures["coverage"][2] > 0.8
    assert figures["distinct_tags"][1] > 30 and figures["distinct_tags"][2] > 100
    smallest = frame.group_by("tag_3").len().filter(pl.col("tag_3").map_elements(tag_label, return_dtype=pl.Utf8).str.starts_with("Other "))
    assert smallest.height > 0  # rare leaf categories were merged


def test_tags_table_reads_every_item_or_a_few_and_refuses_another_catalogue(tmp_path):
    path = tmp_path / "tags.parquet"
    assert read_tags(path, 2) is None and read_item_tags(path, [0]) == {}
    write_parquet(pl.DataFrame({"item": [1, 0], "tag_1": ["Hair", "Makeup"], "tag_2": ["Hair > Oil", None],
                                "source_1": ["llm", "metadata"]}), path)
    assert read_tags(path, 2) == [["Makeup", "Hair"], ["", "Hair > Oil"]]
    assert read_item_tags(path, [1, 5]) == {1: ItemTags(["Hair", "Hair > Oil"], ["llm", None])}
    with pytest.raises(SemrecError, match="does not give tags for items 0..2") as error:
        read_tags(path, 3)
    assert "semrec tag --force" in error.value.hint


# -- the clustering fallback --------------------------------------------------------------------
def test_distinctive_words_prefer_what_sets_a_cluster_apart():
    lipsticks = [title_words(t) for t in ["Matte lipstick red", "Creamy lipstick nude", "Lipstick set"]]
    shampoos = [title_words(t) for t in ["Argan shampoo", "Shampoo for dry hair", "Dry shampoo spray"]]
    assert distinctive_words(lipsticks, lipsticks + shampoos, top=1) == ["lipstick"]
    assert distinctive_words(shampoos, lipsticks + shampoos, top=1) == ["shampoo"]
    assert distinctive_words(shampoos, lipsticks + shampoos, top=1, exclude=frozenset({"shampoo"})) == ["dry"]


def test_fallback_clustering_builds_a_labelled_valid_tree_deterministically():
    groups = {"lipstick": 12, "shampoo": 12, "perfume": 12}
    titles, vectors = [], []
    generator = torch.Generator().manual_seed(0)
    for g, (word, n) in enumerate(groups.items()):
        for i in range(n):
            titles.append(f"{word} {['red', 'blue', 'green', 'gold'][i % 4]} edition")
            center = torch.zeros(16)
            center[g] = 5.0
            vectors.append(center + torch.randn(16, generator=generator) * 0.1)
    vectors = torch.stack(vectors)

    def cluster():
        names = [[None, None] for _ in titles]
        sources = [[None, None] for _ in titles]
        touched = fill_by_clustering(names, sources, vectors, titles, branching=3, min_size=4, seed=7)
        return names, sources, touched

    names, sources, touched = cluster()
    assert touched == len(titles) and all(s == ["fallback", "fallback"] for s in sources)
    level_1 = {word: {names[i][0] for i in range(g * 12, (g + 1) * 12)} for g, word in enumerate(groups)}
    for word, labels in level_1.items():
        assert len(labels) == 1 and word in next(iter(labels)).lower()
    frame = pl.DataFrame({"item": list(range(len(titles))), "tag_1": [n[0] for n in names], "tag_2": [SEPARATOR.join(n) for n in names]})
    assert tree_violations(frame, 2) == []
    assert cluster()[0] == names


def test_auto_without_an_endpoint_fills_missing_levels_by_clustering_and_warns(make_workspace):
    ws = make_workspace("demo", **{"tag.source": "auto", "tag.min_count": 2, "tag.levels": 2})
    rows = [(f"{w} lipstick {c}", ["Makeup", "Lips"]) for w in ("matte", "glossy") for c in ("red", "nude", "pink")]
    rows += [(f"{w} shampoo {c}", ["Hair Care"]) for w in ("argan", "dry") for c in ("large", "small", "travel")]
    write_items(ws, rows)
    figures, frame = tag(ws)
    assert_valid(frame, 2)
    assert figures["sources"] == {"metadata": [12, 6], "llm": [0, 0], "fallback": [0, 6]}
    shampoo_tags = set(frame.filter(pl.col("tag_1") == "Hair Care")["tag_2"])
    assert all(t.startswith("Hair Care > ") for t in shampoo_tags)
    assert any("Shampoo" in tag_label(t) or "Argan" in tag_label(t) or "Dry" in tag_label(t) for t in shampoo_tags)
    text = ws.reporter.text()
    assert "6 items got fallback tags" in text and "no LLM endpoint is configured" in text


# -- the command ---------------------------------------------------------------------
def test_semrec_tag_command_on_the_demo_runs_embed_first_and_shows_an_item(make_workspace, monkeypatch):
    from semrec.cli import app

    ws = make_workspace("demo", **{"data.demo_items": 300, "data.demo_users": 400})
    ws.project.path.write_text(render_toml(ws.settings))
    monkeypatch.chdir(ws.root)
    runner = CliRunner()
    result = runner.invoke(app, ["tag", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["items"] == pl.read_parquet(ws.path(ITEMS)).height and len(figures["distinct_tags"]) == 3
    assert "embed: missing" in result.output
    frame = pl.read_parquet(ws.path(TAGS))
    assert_valid(frame, 3)
    items = pl.read_parquet(ws.path(ITEMS))
    key = items["item_key"][7]
    shown = runner.invoke(app, ["tag", "--show", key, "--json"])
    assert shown.exit_code == 0, shown.output
    shown = json.loads(shown.stdout)
    assert shown["tag_path"] == frame["tag_3"][7] and shown["text"] == items["text"][7]
    assert shown["tags"] == [tag_label(frame[c][7]) for c in tag_columns(3)]
    wrong = runner.invoke(app, ["tag", "--show", key[:-1] + "x"])
    assert wrong.exit_code == 2 and "did you mean" in wrong.output and key in wrong.output
