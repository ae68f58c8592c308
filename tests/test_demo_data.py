"""The generated demo data, the shared preparation (k-core, ids, splits), and the download command."""

import json
from collections import Counter

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from semrec.cli import app
from semrec.data import demo, download
from semrec.data.prepare import k_core, leave_one_out, prepare_tables
from semrec.data.source import SourceData
from semrec.artifacts import INTERACTIONS, ITEMS, SPLITS


def test_same_seed_gives_identical_tables_and_another_seed_does_not():
    first = demo.generate(seed=7, n_items=300, n_users=400)
    second = demo.generate(seed=7, n_items=300, n_users=400)
    other = demo.generate(seed=8, n_items=300, n_users=400)
    for a, b in zip(first, second):
        assert_frame_equal(a, b)
    assert not first[1].equals(other[1])


def test_demo_items_sit_in_a_three_level_tree_with_titles_from_their_leaf():
    items, _ = demo.generate(seed=1, n_items=640, n_users=16)
    paths = items["category_path"].to_list()
    assert all(len(p) == 3 for p in paths)
    assert len({tuple(p) for p in paths}) == 64 and len({p[0] for p in paths}) == 4
    assert all(p[2] in title for p, title in zip(paths, items["title"])), "the product noun of the leaf is in the title"
    assert items["title"].n_unique() == items.height
    parents = {}
    for top, aisle, _ in paths:
        assert parents.setdefault(aisle, top) == top, "every aisle has one department"


def test_demo_sessions_have_learnable_structure_and_flat_popularity():
    items, interactions = demo.generate(seed=3, n_items=3000, n_users=4000)
    lengths = interactions.group_by("user_key").len()["len"]
    assert lengths.min() >= 5 and lengths.max() <= 20
    ordered = interactions.group_by("user_key", maintain_order=True).agg("item_key", "timestamp")
    assert all(t == sorted(t) and len(set(t)) == len(t) for t in ordered["timestamp"].to_list())
    counts = Counter(interactions["item_key"])
    assert max(counts.values()) < 5 * (interactions.height / items.height), "no item dominates"
    leaf = dict(zip(items["item_key"], (p[2] for p in items["category_path"])))
    same_leaf = total = 0
    for sequence in ordered["item_key"].to_list():
        for a, b in zip(sequence, sequence[1:]):
            same_leaf += leaf[a] == leaf[b]
            total += 1
    assert 0.6 < same_leaf / total < 0.85


def test_demo_download_writes_the_artifact_contract(make_workspace):
    ws = make_workspace("demo", **{"data.demo_items": 300, "data.demo_users": 400})
    figures = ws.ensure("download")
    items = pl.read_parquet(ws.path(ITEMS))
    interactions = pl.read_parquet(ws.path(INTERACTIONS))
    splits = pl.read_parquet(ws.path(SPLITS))
    assert items["item"].to_list() == list(range(items.height))
    assert {"item": pl.Int64, "item_key": pl.Utf8, "title": pl.Utf8, "text": pl.Utf8,
            "category_path": pl.List(pl.Utf8)}.items() <= dict(items.schema).items()
    assert dict(interactions.schema) == {"user": pl.Int64, "user_key": pl.Utf8, "item": pl.Int64,
                                         "timestamp": pl.Int64, "position": pl.Int64}
    assert interactions.equals(interactions.sort("user", "position"))
    assert interactions["user"].max() + 1 == interactions["user"].n_unique() == figures["users"] == 400
    assert dict(splits.schema) == {"user": pl.Int64, "train": pl.List(pl.Int64), "valid": pl.Int64, "test": pl.Int64}
    full = interactions.group_by("user", maintain_order=True).agg("item")
    for (user, train, valid, test), (user2, items_of_user) in zip(splits.iter_rows(), full.iter_rows()):
        assert user == user2 and train + [valid, test] == items_of_user
    assert figures["sequence_length"]["min"] >= 5 and figures["interactions"] == interactions.height


def test_leave_one_out_skips_users_with_fewer_than_three_items():
    interactions = pl.DataFrame({"user": [0, 0, 1, 1, 1, 1], "item": [5, 6, 1, 2, 3, 4]})
    splits = leave_one_out(interactions)
    assert splits.to_dicts() == [{"user": 1, "train": [1, 2], "valid": 3, "test": 4}]


def test_k_core_repeats_until_every_user_and_item_has_k():
    # user c's only other item is z (seen once): z goes, then c has 1 left and goes, then y has 1 and goes
    rows = [("a", "x"), ("a", "y"), ("b", "x"), ("b", "w"), ("a", "w"), ("c", "y"), ("c", "z")]
    users = np.array(["abc".index(u) for u, _ in rows])
    items = np.array(["wxyz".index(i) for _, i in rows])
    kept = k_core(users, items, 2)
    assert sorted(rows[r] for r in kept) == [("a", "w"), ("a", "x"), ("b", "w"), ("b", "x")]
    assert k_core(users, items, 0).tolist() == list(range(len(rows)))


def test_duplicate_item_keys_from_a_source_are_refused():
    items = pl.DataFrame({"item_key": ["a", "a"], "title": ["x", "y"], "text": ["x", "y"],
                          "category_path": [[], []]}, schema_overrides={"category_path": pl.List(pl.Utf8)})
    interactions = pl.DataFrame({"user_key": ["u"], "item_key": ["a"], "timestamp": [1]})
    with pytest.raises(Exception, match="duplicate item ids"):
        prepare_tables(SourceData("t", items, interactions), min_interactions=0, positive_rating_min=0)


# -- the command line -------------------------------------------------------------------------


def test_init_download_and_status_on_a_fresh_demo_project(tmp_path):
    runner = CliRunner()
    folder = tmp_path / "shop"
    result = runner.invoke(app, ["init", "demo", str(folder)])
    assert result.exit_code == 0, result.output
    toml = (folder / "semrec.toml").read_text()
    (folder / "semrec.toml").write_text(toml.replace("demo_items = 3000", "demo_items = 300").replace("demo_users = 4000", "demo_users = 400"))
    result = runner.invoke(app, ["--project", str(folder), "download", "--json"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["--project", str(folder), "status", "--json"])
    assert result.exit_code == 0, result.output
    stage = next(s for s in json.loads(result.stdout)["stages"] if s["stage"] == "download")
    assert stage["state"] == "done"
    assert stage["figures"]["users"] == 400 and stage["figures"]["items"] <= 300
    assert set(stage["figures"]["sequence_length"]) == {"min", "mean", "median", "max"}
    assert all(size > 0 for size in stage["artifacts"].values())


def test_a_404_exits_with_code_2_and_a_message_not_a_traceback(tmp_path, httpserver, monkeypatch):
    httpserver.expect_request("/ml-1m.zip").respond_with_data("gone", status=404)
    monkeypatch.setenv(download.MIRROR_ENV, httpserver.url_for("/"))
    runner = CliRunner()
    assert runner.invoke(app, ["init", "ml-1m", str(tmp_path / "ml")]).exit_code == 0
    result = runner.invoke(app, ["--project", str(tmp_path / "ml"), "download"])
    assert result.exit_code == 2, result.output
    assert "HTTP 404" in result.output and "ml-1m.zip" in result.output and "Traceback" not in result.output
    assert "data.local_dir" in result.output
