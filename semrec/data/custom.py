"""Your own data: an items table and an interactions table, mapped by `[data.custom]`.

Formats: those of `tables.read_table` (CSV, TSV, Parquet, JSON Lines, RecBole atomic; a CSV may use
';', tab or '|' instead of ',', found from its header). Every value is read as given and checked
here, so that a problem names the file, the line (the header is line 1; for Parquet, the row) and
the column. A table with no rows is an error, whatever the filters downstream.

Timestamps: whole or decimal numbers are unix seconds; text is parsed with
`data.custom.timestamp_format` (strftime) or, when that is '', as a number or ISO 8601. An empty
timestamp is allowed (the row keeps its place in the file); one that does not parse is an error.
"""

from pathlib import Path

import polars as pl

from semrec.data.source import SourceData, clean_text, compose_text, frame_from_rows
from semrec.data.tables import SEPARATORS, TEXT_SUFFIXES, csv_separator, read_table
from semrec.errors import SemrecError


def load(custom, *, root: Path) -> SourceData:
    """Your items and interactions; `custom` is the `[data.custom]` section, `root` the project folder."""
    if not custom.items_path or not custom.interactions_path:
        raise SemrecError(
            "data.custom.items_path and data.custom.interactions_path must name your files",
            "e.g. items_path = \"items.csv\", interactions_path = \"interactions.parquet\" (relative to the project folder)",
        )
    items_path = _resolve(root, custom.items_path, "items_path")
    inter_path = _resolve(root, custom.interactions_path, "interactions_path")
    items = read_items(items_path, custom)
    interactions = read_interactions(inter_path, custom, items["item_key"])
    name = f"custom ({items_path.name} + {inter_path.name})"
    return SourceData(name, items, interactions, unknown_items="drop", notes=_separator_notes(items_path, inter_path))


def _separator_notes(*paths: Path) -> dict:
    """The separators found in CSV headers that are not the suffix's own (';' in a .csv), to show with the figures."""
    found = {}
    for path in paths:
        if path.suffix.lower() in TEXT_SUFFIXES:
            separator = csv_separator(path)
            if separator != TEXT_SUFFIXES[path.suffix.lower()]:
                found[path.name] = SEPARATORS[separator]
    return {"separators_found": found} if found else {}


def _resolve(root: Path, name: str, key: str) -> Path:
    path = Path(name).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise SemrecError(f"data.custom.{key}: {path} does not exist", "give a path relative to the project folder, or an absolute one")
    return path


# -- checking a table -------------------------------------------------------------------------


def _where(path: Path, line: int, column: str) -> str:
    unit = "row" if path.suffix.lower() == ".parquet" else "line"
    return f"{path.name} {unit} {line}, column {column!r}"


def _require(path: Path, frame: pl.DataFrame, column: str, key: str) -> None:
    if column not in frame.columns:
        found = ", ".join(repr(c) for c in frame.columns if c != "_line")
        split = f" (the header split on {SEPARATORS[csv_separator(path)]}s)" if path.suffix.lower() in TEXT_SUFFIXES else ""
        raise SemrecError(
            f"{path.name}: no column {column!r} (data.custom.{key})", f"columns found: {found}{split}; set data.custom.{key}"
        )


def _require_rows(path: Path, frame: pl.DataFrame, what: str) -> None:
    if frame.height == 0:
        raise SemrecError(f"{path.name} has no rows, only a header", f"fill it with {what}, one per line")


def _no_nulls(path: Path, frame: pl.DataFrame, column: str) -> None:
    empty = frame.filter(pl.col(column).is_null() | (pl.col(column).cast(pl.Utf8).str.strip_chars() == ""))
    if empty.height:
        raise SemrecError(f"{_where(path, empty['_line'][0], column)}: empty id")


# -- items ------------------------------------------------------------------------------------


def read_items(path: Path, custom) -> pl.DataFrame:
    frame = read_table(path)
    id_col = custom.item_id_column
    _require(path, frame, id_col, "item_id_column")
    _require_rows(path, frame, "your items")
    _no_nulls(path, frame, id_col)
    frame = frame.with_columns(pl.col(id_col).cast(pl.Utf8).str.strip_chars().alias("item_key"))
    duplicated = frame.filter(pl.col("item_key").is_duplicated())
    if duplicated.height:
        key = duplicated["item_key"][0]
        lines = duplicated.filter(pl.col("item_key") == key)["_line"].to_list()
        raise SemrecError(f"{_where(path, lines[1], id_col)}: duplicate item id {key!r} (also on line {lines[0]})")
    if custom.title_column:
        _require(path, frame, custom.title_column, "title_column")
    for column in custom.text_columns:
        _require(path, frame, column, "text_columns")
    if custom.category_column:
        _require(path, frame, custom.category_column, "category_column")

    rows = []
    for record in frame.iter_rows(named=True):
        title = clean_text(record[custom.title_column]) if custom.title_column else ""
        title = title or record["item_key"]
        path_list = _category_path(record[custom.category_column], custom.category_separator) if custom.category_column else []
        fields = [(column.replace("_", " ").capitalize(), _as_text(record[column])) for column in custom.text_columns]
        if path_list:
            fields.append(("Categories", " > ".join(path_list)))
        rows.append({"item_key": record["item_key"], "title": title, "text": compose_text(title, *fields), "category_path": path_list})
    items = frame_from_rows(rows, {"item_key": pl.Utf8, "title": pl.Utf8, "text": pl.Utf8, "category_path": pl.List(pl.Utf8)})
    extra = [c for c in custom.text_columns if c not in ("item_key", "title", "text", "category_path")]
    return items.with_columns(frame.select(pl.col(c).cast(pl.Utf8) for c in extra)) if extra else items


def _as_text(value) -> str:
    if isinstance(value, list):
        return ", ".join(clean_text(v) for v in value if v is not None)
    return clean_text(value)


def _category_path(value, separator: str) -> list[str]:
    if value is None:
        return []
    parts = value if isinstance(value, list) else str(value).split(separator)
    return [p for p in (clean_text(p) for p in parts) if p]


# -- interactions -----------------------------------------------------------------------------


def read_interactions(path: Path, custom, item_keys: pl.Series) -> pl.DataFrame:
    frame = read_table(path)
    for column, key in ((custom.user_id_column, "user_id_column"), (custom.item_id_column, "item_id_column")):
        _require(path, frame, column, key)
        _no_nulls(path, frame, column)
    _require_rows(path, frame, "interactions (user, item)")
    if custom.timestamp_column:
        _require(path, frame, custom.timestamp_column, "timestamp_column")
    if custom.rating_column:
        _require(path, frame, custom.rating_column, "rating_column")

    frame = frame.with_columns(
        user_key=pl.col(custom.user_id_column).cast(pl.Utf8).str.strip_chars(),
        item_key=pl.col(custom.item_id_column).cast(pl.Utf8).str.strip_chars(),
    )
    unknown = frame.filter(~pl.col("item_key").is_in(item_keys.implode()))
    if unknown.height:
        raise SemrecError(
            f"{_where(path, unknown['_line'][0], custom.item_id_column)}: item {unknown['item_key'][0]!r} "
            f"is not in the items table ({unknown.height} such interactions)",
            "every interaction must name an item of data.custom.items_path",
        )
    timestamp = (
        parse_timestamps(path, frame, custom.timestamp_column, custom.timestamp_format)
        if custom.timestamp_column
        else pl.Series("timestamp", [None] * frame.height, dtype=pl.Int64)
    )
    columns = {"user_key": frame["user_key"], "item_key": frame["item_key"], "timestamp": timestamp}
    if custom.rating_column:
        columns["rating"] = _parse_ratings(path, frame, custom.rating_column)
    return pl.DataFrame(columns)


def parse_timestamps(path: Path, frame: pl.DataFrame, column: str, fmt: str) -> pl.Series:
    """Unix seconds (Int64, null where the file has none); a value that does not parse is an error."""
    values = frame[column]
    if values.dtype.is_numeric():
        return values.cast(pl.Float64).floor().cast(pl.Int64).alias("timestamp")
    if values.dtype == pl.Datetime or values.dtype == pl.Date:
        return values.cast(pl.Datetime("us")).dt.epoch("s").alias("timestamp")
    text = values.cast(pl.Utf8).str.strip_chars()
    missing = text.is_null() | (text == "")
    if fmt:
        parsed = text.str.strptime(pl.Datetime("us"), fmt, strict=False).dt.epoch("s")
        how = f"with timestamp_format {fmt!r}"
    else:
        parsed = text.cast(pl.Float64, strict=False).floor().cast(pl.Int64)
        rest = parsed.is_null() & ~missing
        if rest.any():
            parsed = parsed.scatter(rest.arg_true(), _iso_seconds(text.filter(rest)))
        how = "as unix seconds or ISO 8601"
    bad = parsed.is_null() & ~missing
    if bad.any():
        index = bad.arg_true()[0]
        raise SemrecError(
            f"{_where(path, frame['_line'][index], column)}: timestamp {text[index]!r} cannot be read {how}",
            "set data.custom.timestamp_format (e.g. \"%Y-%m-%d %H:%M:%S\") or fix the value",
        )
    return parsed.alias("timestamp")


def _iso_seconds(text: pl.Series) -> pl.Series:
    """ISO 8601 text -> unix seconds (null where it does not parse; a zone, if given, is honoured)."""
    try:
        parsed = text.str.to_datetime(strict=False, time_unit="us")
    except pl.exceptions.PolarsError:
        return pl.Series([None] * len(text), dtype=pl.Int64)
    return parsed.dt.epoch("s").cast(pl.Int64)


def _parse_ratings(path: Path, frame: pl.DataFrame, column: str) -> pl.Series:
    values = frame[column]
    parsed = values.cast(pl.Float64, strict=False) if not values.dtype.is_numeric() else values.cast(pl.Float64)
    bad = parsed.is_null() & values.is_not_null()
    if bad.any():
        index = bad.arg_true()[0]
        raise SemrecError(f"{_where(path, frame['_line'][index], column)}: rating {values[index]!r} is not a number")
    return parsed.alias("rating")
