"""The real datasets in ../shared/datasets (skipped with a reason when absent)."""

import gzip
import json

import polars as pl

from semrec.artifacts import INTERACTIONS, ITEMS


def test_beauty_p5_files_give_the_published_counts_and_the_datamaps_ids(make_workspace, shared_datasets):
    folder = shared_datasets / "amazon-beauty-2014"
    ws = make_workspace("beauty", **{"data.source_format": "p5", "data.local_dir": str(folder)})
    figures = ws.ensure("download")
    assert (figures["users"], figures["items"], figures["interactions"]) == (22363, 12101, 198502)
    assert figures["sequence_length"] == {"min": 5, "mean": 8.88, "median": 6.0, "max": 204}

    items = pl.read_parquet(ws.path(ITEMS))
    datamaps = json.loads(gzip.decompress((folder / "datamaps.json.gz").read_bytes()))
    assert items["item_key"].to_list() == [datamaps["id2item"][str(k)] for k in range(1, 12102)]
    assert items.filter(pl.col("title").str.strip_chars() == "").height == 0
    assert items.filter(pl.col("category_path").list.len() == 0).height == 0
    assert figures["titles_filled"] == 7

    interactions = pl.read_parquet(ws.path(INTERACTIONS))
    lines = gzip.decompress((folder / "sequential_data.txt.gz").read_bytes()).decode().splitlines()
    ours = interactions.group_by("user", maintain_order=True).agg("user_key", "item")
    for line in lines[:500] + lines[-500:]:
        user, *sequence = (int(t) for t in line.split())
        row = ours.row(user - 1, named=True)
        assert row["user_key"][0] == datamaps["id2user"][str(user)]
        assert row["item"] == [k - 1 for k in sequence]


def test_movielens_1m_reconstructed_ratings_give_6040_users(make_workspace, shared_datasets):
    ws = make_workspace("ml-1m", **{"data.local_dir": str(shared_datasets / "movielens-1m")})
    figures = ws.ensure("download")
    assert figures["users"] == 6040
    assert figures["items"] == 3416 and figures["interactions"] == 999611  # after the 5-core, as SASRec reports
    assert figures["interactions_without_timestamp"] == 337147
