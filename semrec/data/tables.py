"""Reading a table file a person gives: custom data (`[data.custom]`) and cold-start items (`tokenize --items`).

Formats, chosen by the file name: CSV (.csv, .tsv), Parquet (.parquet), JSON Lines (.jsonl,
.ndjson) and RecBole atomic files (.item, .inter, .user: tab-separated, CSV quoting, a header of
`name:type`; the type is dropped from the column name). Every frame carries a `_line` column,
where each row is in the file (a header is line 1; for Parquet, the row number), so that a
message can name it.
"""

from pathlib import Path

import polars as pl

from semrec.errors import SemrecError

TEXT_SUFFIXES = {".csv": ",", ".tsv": "\t"}
JSON_SUFFIXES = (".jsonl", ".ndjson")
ATOMIC_SUFFIXES = (".item", ".inter", ".user")
FORMATS = "use .csv, .tsv, .parquet, .jsonl / .ndjson, or RecBole atomic .item / .inter"


def read_table(path: Path, *, infer_types: bool = False, what: str = "rows") -> pl.DataFrame:
    """The table at `path` with a `_line` column; `what` (e.g. "new items") says in a message what the file should hold.

    CSV values are read as text unless `infer_types`: custom data checks and parses every value
    itself so that a bad one is named by line; cold-start items let polars infer the types, then
    cast them to the items table's."""
    path = Path(path)
    if not path.is_file():
        raise SemrecError(f"no file at {path}", f"give the path of a CSV, TSV, Parquet, JSON Lines (.jsonl) or RecBole atomic file of {what}")
    suffix = path.suffix.lower()
    try:
        if suffix in ATOMIC_SUFFIXES:
            return read_atomic(path)
        if suffix in TEXT_SUFFIXES:
            types = {"infer_schema_length": None} if infer_types else {"infer_schema": False}
            frame = pl.read_csv(path, separator=TEXT_SUFFIXES[suffix], **types)
            return frame.with_columns(_line=pl.int_range(2, frame.height + 2, dtype=pl.Int64))
        if suffix in JSON_SUFFIXES:
            frame = pl.read_ndjson(path, infer_schema_length=None)
            return frame.with_columns(_line=pl.int_range(1, frame.height + 1, dtype=pl.Int64))
        if suffix == ".parquet":
            frame = pl.read_parquet(path)
            return frame.with_columns(_line=pl.int_range(1, frame.height + 1, dtype=pl.Int64))
    except (pl.exceptions.PolarsError, OSError) as e:
        raise SemrecError(f"{path}: cannot be read as a {suffix} table: {e}", "check that the file is a well-formed table") from e
    raise SemrecError(f"{path}: unknown table format {suffix!r}", FORMATS)


def read_atomic(path: Path) -> pl.DataFrame:
    """A RecBole atomic file (plain or gzipped): every column as text, named without its `:type`."""
    try:
        frame = pl.read_csv(path, separator="\t", quote_char='"', infer_schema=False)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise SemrecError(f"{path}: not a RecBole atomic file: {e}") from e
    frame = frame.rename({name: name.split(":", 1)[0] for name in frame.columns})
    return frame.with_columns(_line=pl.int_range(2, frame.height + 2, dtype=pl.Int64))
