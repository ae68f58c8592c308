"""`semrec recommend`: answers for known users and given histories, clear errors, cold-start items."""

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from semrec.cli import app
from semrec.errors import SemrecError
from semrec.project import load_project, render_toml
from semrec.recommend import Recommender
from semrec.report import RecordingReporter
from semrec.artifacts import INTERACTIONS, ITEMS, SEMANTIC_IDS
from semrec.io import write_parquet
from semrec.workspace import Workspace
from conftest import copied_workspace, workspace_at
from test_evaluate import TINY, use_synthetic_tokenizer

FAST = {**TINY, "retriever.train.steps": 40, "retriever.user_bins": 50}

pytestmark = pytest.mark.slow  # every test here shares a trained retriever


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory) -> Path:
    """One small demo workspace with a trained retriever (synthetic IDs), built once for this module
    through the stage runner, so its manifest is what a command would have left."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        use_synthetic_tokenizer(patch)
        ws = workspace_at(root, "demo", **FAST)
        ws.project.path.write_text(render_toml(ws.settings))
        ws.ensure("fit-retriever")
    return root


@pytest.fixture
def trained(trained_once, tmp_path, monkeypatch) -> Workspace:
    """A copy of the trained workspace that a test may change (the synthetic tokenizer stages in place)."""
    use_synthetic_tokenizer(monkeypatch)
    return copied_workspace(trained_once, tmp_path / "copy")


def reopened(ws) -> Workspace:
    """The workspace as a new command sees it: a fresh load, messages recorded."""
    return Workspace(load_project(explicit=ws.root), RecordingReporter())


def user_history(ws, user_key: str) -> list[int]:
    frame = pl.read_parquet(ws.path(INTERACTIONS)).filter(pl.col("user_key") == user_key).sort("position")
    return frame["item"].to_list()


def test_recommend_json_has_the_documented_shape(trained):
    result = CliRunner().invoke(app, ["--project", str(trained.root), "recommend", "--user", "U00007", "--k", "5", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["user"] == "U00007" and answer["k"] == 5 and len(answer["items"]) == 5
    items = pl.read_parquet(trained.path(ITEMS)).sort("item")
    ids = pl.read_parquet(trained.path(SEMANTIC_IDS))
    for rank, row in enumerate(answer["items"], 1):
        assert set(row) == {"rank", "item_key", "title", "score", "semantic_id", "tags"}
        assert row["rank"] == rank
        item = items.filter(pl.col("item_key") == row["item_key"]).row(0, named=True)
        assert row["title"] == item["title"]
        assert len(row["semantic_id"]) == 4
        assert row["semantic_id"] == list(ids.filter(pl.col("item") == item["item"]).drop("item").row(0))  # as tokenized
        assert row["tags"] == item["category_path"]  # the plain last component of each level's tag
    scores = [row["score"] for row in answer["items"]]
    assert scores == sorted(scores, reverse=True)


def test_seen_items_are_excluded_unless_asked_for(trained):
    recommender = Recommender.load(reopened(trained))
    seen = set(user_history(trained, "U00003"))
    keys = pl.read_parquet(trained.path(ITEMS))["item_key"].to_list()
    seen_keys = {keys[i] for i in seen}
    answer = recommender.for_user("U00003", k=10)
    assert len(answer["items"]) == 10 and not {row["item_key"] for row in answer["items"]} & seen_keys
    everything = recommender.for_user("U00003", k=10, exclude_seen=False)
    assert len(everything["items"]) == 10
    # a second call on the loaded recommender gives the same answer
    assert recommender.for_user("U00003", k=10) == answer


def test_history_of_item_keys_for_an_unseen_user(trained):
    recommender = Recommender.load(reopened(trained))
    keys = pl.read_parquet(trained.path(ITEMS)).sort("item")["item_key"].to_list()
    answer = recommender.for_history(keys[:3], k=4)
    assert answer["user"] is None and len(answer["items"]) == 4
    assert not {row["item_key"] for row in answer["items"]} & set(keys[:3])


def test_unknown_user_message_suggests_near_matches_and_history(trained):
    result = CliRunner().invoke(app, ["--project", str(trained.root), "recommend", "--user", "U0007"])
    assert result.exit_code == 2
    assert "unknown user 'U0007'" in result.output and "did you mean" in result.output
    assert "--history" in result.output


def test_unknown_item_in_history_is_a_clear_error(trained):
    recommender = Recommender.load(reopened(trained))
    with pytest.raises(SemrecError, match="unknown item 'DEMO0001'.*did you mean"):
        recommender.for_history(["DEMO0001"], k=3)


def test_k_beyond_what_can_be_recommended_is_a_clear_error(trained):
    recommender = Recommender.load(reopened(trained))
    with pytest.raises(SemrecError, match="only .* items can be recommended"):
        recommender.for_user("U00003", k=299)


def test_refitted_semantic_ids_are_refused(trained):
    ids = pl.read_parquet(trained.path(SEMANTIC_IDS))
    swapped = ids.with_columns(pl.when(pl.col("item") < 2).then(1 - pl.col("item")).otherwise(pl.col("item")).alias("item"))
    write_parquet(swapped.sort("item"), trained.path(SEMANTIC_IDS))
    with pytest.raises(SemrecError, match="trained on other semantic IDs") as info:
        Recommender.load(reopened(trained))
    assert "semrec fit-retriever" in str(info.value)


def test_cold_start_items_are_recommendable_without_retraining(trained):
    ids = pl.read_parquet(trained.path(SEMANTIC_IDS)).sort("item")
    items = pl.read_parquet(trained.path(ITEMS)).sort("item")
    n = ids.height
    largest = int(ids["dedup"].max())
    source = ids.row(0, named=True)
    taken = {tuple(r) for r in ids.select("code_1", "code_2", "code_3", "dedup").iter_rows()}
    free = next(d for d in range(largest + 1) if (source["code_1"], source["code_2"], 15 - source["code_3"], d) not in taken)
    new = pl.DataFrame(
        {"item": [n, n + 1], "code_1": [source["code_1"]] * 2, "code_2": [source["code_2"]] * 2,
         "code_3": [15 - source["code_3"]] * 2, "dedup": [free, largest + 1]},
    ).cast(pl.Int64)
    write_parquet(pl.concat([ids, new]), trained.path(SEMANTIC_IDS))
    write_parquet(pl.concat([items, items.head(2).with_columns(
        item=pl.Series([n, n + 1]), item_key=pl.Series(["NEW1", "NEW2"]))]), trained.path(ITEMS))
    ws = reopened(trained)
    recommender = Recommender.load(ws)
    assert "1 item(s) added since training" in ws.reporter.text()
    assert recommender.trained.trie.size == n + 1  # the first new item can be generated, the second cannot
    answer = recommender.for_history(["NEW1", "NEW2"], k=3)
    assert len(answer["items"]) == 3


def test_recommend_runs_missing_stages_first_and_decoding_settings_never_retrain(trained):
    cli = ["--project", str(trained.root)]
    (trained.root / "eval").mkdir(exist_ok=True)
    shutil.rmtree(trained.path("retriever"))
    result = CliRunner().invoke(app, [*cli, "recommend", "--user", "U00007", "--k", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert "fit-retriever: missing" in result.stderr and len(json.loads(result.stdout)["items"]) == 3
    text = trained.project.path.read_text()
    trained.project.path.write_text(text.replace("\nbeam_size = 20", "\nbeam_size = 40").replace("ks = [5, 10]", "ks = [1, 10]"))
    status = CliRunner().invoke(app, [*cli, "status", "--json"])
    states = {row["stage"]: row["state"] for row in json.loads(status.stdout)["stages"]}
    assert states["fit-retriever"] == "done"
    result = CliRunner().invoke(app, [*cli, "recommend", "--user", "U00007", "--k", "3", "--json"])
    assert result.exit_code == 0 and "running it first" not in result.stderr
