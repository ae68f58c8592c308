"""What a source hands to the download stage, and the helpers sources build their items with.

Every source module (demo, amazon, movielens, kuairand, custom) has a `load(...) -> SourceData`
that takes only the settings it reads; `prepare.py` imports the sources, never the other way.
"""

import html
from dataclasses import dataclass, field

import polars as pl


@dataclass
class SourceData:
    """What a source hands over.

    items: one row per item: `item_key` (unique, any dtype), `title`, `text`, `category_path`
      (List(Utf8)), plus source fields.
    interactions: `user_key`, `item_key` (same dtype as the items'), `timestamp` (Int64 unix
      seconds, nullable), optionally `rating` (Float64); rows in file order. A LazyFrame is fine.
    """

    name: str
    items: pl.DataFrame
    interactions: pl.DataFrame | pl.LazyFrame
    fixed_ids: bool = False
    unknown_items: str = "fallback"  # interactions with an item missing from `items`: fallback | drop
    warnings: list[str] = field(default_factory=list)
    notes: dict = field(default_factory=dict)


def clean_text(value) -> str:
    """HTML entities decoded ("&amp;" -> "&") and runs of whitespace, newlines included, made one space."""
    if value is None:
        return ""
    return " ".join(html.unescape(str(value)).split())


def compose_text(title: str, *fields: tuple[str, str]) -> str:
    """The default string to embed (TIGER style): the title, then "Label: value." for each non-empty field."""
    parts = [title.rstrip(".") + "."] if title else []
    parts += [f"{label}: {value}." for label, value in fields if value]
    return " ".join(parts)


def frame_from_rows(rows: list[dict], schema: dict) -> pl.DataFrame:
    """A DataFrame from row dicts, built column by column.

    List(Utf8) columns travel as one joined string per row and are split by polars: building
    them from Python lists costs a Series per row (20x slower). The separator is a control
    character that `clean_text` never leaves in a value.
    """
    columns = {}
    for name, dtype in schema.items():
        values = [row[name] for row in rows]
        if dtype == pl.List(pl.Utf8):
            joined = pl.Series(name, ["\x1f".join(v) for v in values], dtype=pl.Utf8)
            columns[name] = joined.str.split("\x1f").list.eval(pl.element().filter(pl.element() != ""))
        else:
            columns[name] = pl.Series(name, values, dtype=dtype)
    return pl.DataFrame(columns)
