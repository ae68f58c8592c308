"""Reading a table file a person gives: custom data (`[data.custom]`) and cold-start items (`tokenize --items`).

Formats, chosen by the file name: CSV (.csv, .tsv), Parquet (.parquet), JSON Lines (.jsonl,
.ndjson) and RecBole atomic files (.item, .inter, .user: tab-separated, CSV quoting, a header of
`name:type`; the type is dropped from the column name). Every frame carries a `_line` column,
where each row is in the file (a header is line 1; for Parquet, the row number), so that a
message can name it.

A .csv or .tsv file is split on the separator its suffix implies unless its header holds none of
it and holds another of `SEPARATORS`: spreadsheets in many locales write CSV with ';'. Text must
be UTF-8; a line that is not is named. A last line without a newline that lacks fields the header
has is refused: the file was cut short (an interrupted copy or export).
"""

import csv
import json
from pathlib import Path

import polars as pl

from semrec.data.download import last_line_if_cut, looks_truncated
from semrec.errors import SemrecError

TEXT_SUFFIXES = {".csv": ",", ".tsv": "\t"}
SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
JSON_SUFFIXES = (".jsonl", ".ndjson")
ATOMIC_SUFFIXES = (".item", ".inter", ".user")
FORMATS = "use .csv, .tsv, .parquet, .jsonl / .ndjson, or RecBole atomic .item / .inter"
_CUT_HINT = "the file was cut short (an interrupted copy or export?): write it again in full"


def read_table(path: Path, *, infer_types: bool = False, what: str = "rows") -> pl.DataFrame:
    """The table at `path` with a `_line` column; `what` (e.g. "new items") says in a message what the file should hold.

    CSV values are read as text unless `infer_types`: custom data checks and parses every value
    itself so that a bad one is named by line; cold-start items let polars infer the types, then
    cast them to the items table's."""
    path = Path(path)
    if not path.is_file():
        raise SemrecError(f"no file at {path}", f"give the path of a CSV, TSV, Parquet, JSON Lines (.jsonl) or RecBole atomic file of {what}")
    suffix = path.suffix.lower()
    if suffix in ATOMIC_SUFFIXES:
        return read_atomic(path)
    separator = TEXT_SUFFIXES.get(suffix)
    try:
        if suffix in TEXT_SUFFIXES:
            separator = csv_separator(path)
            types = {"infer_schema_length": None} if infer_types else {"infer_schema": False}
            frame = pl.read_csv(path, separator=separator, **types)
            _check_last_record(path, frame, separator)
            return frame.with_columns(_line=pl.int_range(2, frame.height + 2, dtype=pl.Int64))
        if suffix in JSON_SUFFIXES:
            frame = pl.read_ndjson(path, infer_schema_length=None)
            return frame.with_columns(_line=pl.int_range(1, frame.height + 1, dtype=pl.Int64))
        if suffix == ".parquet":
            frame = pl.read_parquet(path)
            return frame.with_columns(_line=pl.int_range(1, frame.height + 1, dtype=pl.Int64))
    except (pl.exceptions.PolarsError, OSError) as e:
        problem = f"cannot be read as a {suffix} table: {e}"
        raise _unreadable(path, separator, problem, "check that the file is a well-formed table") from e
    raise SemrecError(f"{path}: unknown table format {suffix!r}", FORMATS)


def read_atomic(path: Path) -> pl.DataFrame:
    """A RecBole atomic file (plain or gzipped): every column as text, named without its `:type`."""
    try:
        frame = pl.read_csv(path, separator="\t", quote_char='"', infer_schema=False)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise _unreadable(path, "\t", f"not a RecBole atomic file: {e}") from e
    _check_last_record(path, frame, "\t")
    frame = frame.rename({name: name.split(":", 1)[0] for name in frame.columns})
    return frame.with_columns(_line=pl.int_range(2, frame.height + 2, dtype=pl.Int64))


def csv_separator(path: Path) -> str:
    """The separator of a .csv / .tsv file: its suffix's, unless the header holds none of it but another of `SEPARATORS`."""
    default = TEXT_SUFFIXES[path.suffix.lower()]
    with open(path, "rb") as f:
        header = f.readline(1 << 16).decode("utf-8", errors="replace")
    if default in header:
        return default
    most = max(SEPARATORS, key=header.count)
    return most if most in header else default


def _check_last_record(path: Path, frame: pl.DataFrame, separator: str) -> None:
    """Refuse a last line cut short: no newline at its end, fewer fields than the header, and polars
    read the missing ones as empty (a last line that ends a quoted field spanning lines has them)."""
    line = last_line_if_cut(path)
    if line is None or frame.height == 0:
        return
    fields = _field_count(line, separator)
    if fields < len(frame.columns) and all(value is None for value in frame.row(-1)[fields:]):
        raise looks_truncated(path, line, f"has {fields} of the {len(frame.columns)} fields of the header", _CUT_HINT)


def _unreadable(path: Path, separator: str | None, problem: str, hint: str | None = None) -> SemrecError:
    """The error for a text table polars cannot read: a line that is not UTF-8, a last line cut short, or `problem`."""
    try:
        if path.suffix.lower() != ".parquet":
            not_utf8 = _line_not_utf8(path)
            if not_utf8 is not None:
                return not_utf8
            line = last_line_if_cut(path)
            why = _why_cut(path, line, separator) if line is not None else None
            if why:
                return looks_truncated(path, line, why, _CUT_HINT)
    except OSError:
        pass  # a file that cannot be opened: polars' own words say why
    return SemrecError(f"{path}: {problem}", hint)


def _why_cut(path: Path, line: str, separator: str | None) -> str | None:
    """Why a last line without a newline looks cut: it is not a whole JSON record, or has fewer fields than the header."""
    if path.suffix.lower() in JSON_SUFFIXES:
        return None if _is_json(line) else "is not a whole JSON record"
    if separator is None:
        return None
    with open(path, "rb") as f:
        columns = _field_count(f.readline(1 << 16).decode("utf-8", errors="replace"), separator)
    fields = _field_count(line, separator)
    return f"has {fields} of the {columns} fields of the header" if fields < columns else None


def _field_count(line: str, separator: str) -> int:
    return len(next(csv.reader([line.rstrip("\r\n")], delimiter=separator), []))


def _line_not_utf8(path: Path) -> SemrecError | None:
    """The error naming the first line of a plain text file that is not UTF-8, or None."""
    with open(path, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            return None
        f.seek(0)
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                shown = line.decode("latin-1").strip()[:60]
                return SemrecError(
                    f"{path.name} line {number} is not UTF-8 text: byte 0x{line[e.start]:02x} in {shown!r}",
                    f"save the file as UTF-8; from Latin-1 / Windows-1252, for instance: "
                    f"iconv -f cp1252 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}",
                )
    return None


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True
