"""Reading `tags.parquet`: the one place that knows its layout (an `item` column, `tag_1..tag_L`, and
`source_1..source_L` when the tag stage wrote it). Two forms: every item's tags, as the models and
the health figures need them, and the tags of a few items, as lookups and recommendations show them.
"""

from pathlib import Path
from typing import NamedTuple

import polars as pl

from semrec.errors import SemrecError
from semrec.tags import tag_columns_in


class ItemTags(NamedTuple):
    tags: list[str | None]  # the full tag path of every level, broadest first
    sources: list[str | None]  # where each level's tag came from (None where the table records no source)


def read_tags(path: Path, n_items: int) -> list[list[str]] | None:
    """One list of `n_items` tag strings per level (row i = item i), or None when there is no table.

    A table that does not tag exactly the items 0..n_items-1 is a SemrecError: it belongs to another
    catalogue.
    """
    if not path.exists():
        return None
    frame = pl.read_parquet(path).sort("item")
    columns = tag_columns_in(frame.columns)
    if not columns or frame.height != n_items or frame["item"].to_list() != list(range(n_items)):
        raise SemrecError(
            f"{path} does not give tags for items 0..{n_items - 1} (it has {frame.height} rows, columns {frame.columns})",
            "run `semrec tag --force` to tag the current catalogue",
        )
    return [[t if t is not None else "" for t in frame[c].to_list()] for c in columns]


def read_item_tags(path: Path, items: list[int]) -> dict[int, ItemTags]:
    """The tags of each of `items` that the table holds; empty when there is no table."""
    if not path.exists():
        return {}
    frame = pl.scan_parquet(path)
    names = frame.collect_schema().names()
    columns = tag_columns_in(names)
    sources = [f"source_{c.removeprefix('tag_')}" for c in columns]
    present = [c for c in sources if c in names]
    rows = frame.filter(pl.col("item").is_in(items)).select("item", *columns, *present).collect()
    return {
        row["item"]: ItemTags([row[c] for c in columns], [row.get(c) for c in sources])
        for row in rows.iter_rows(named=True)
    }
