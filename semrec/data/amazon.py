"""Amazon Reviews 2014 (Beauty, Sports and Outdoors, Toys and Games), in two upstream forms.

raw (data.source_format = "raw"): the UCSD release, `reviews_<Category>_5.json.gz` (one JSON
review per line) and `meta_<Category>.json.gz` (one Python-literal dict per line, parsed with
`ast.literal_eval`, never `eval`). The shared k-core and ordering of `prepare.py` apply: users in
order of their first review in the file, each user's items by `unixReviewTime` with ties in file
order, items numbered by first appearance: the S3-Rec / P5 preprocessing.

p5 (data.source_format = "p5"): the preprocessed `sequential_data.txt` (`user item item ...`,
already 5-core and in time order) with `datamaps.json` (P5 ids -> reviewerID / ASIN), and item
metadata from a RecBole atomic `.item` file. Our ids follow P5's: P5 item k is our item k-1,
P5 user k our user k-1. The `.item` file is optional (only Beauty has one published).

Item text as TIGER: title, brand, categories, price. The first category path goes to
`category_path`. An item with an empty title gets "<category leaf> <ASIN>" and a warning.
"""

import ast
import json
import re
from pathlib import Path

import polars as pl

from semrec.data.download import RawFile, RawFiles, open_text, replace_hint
from semrec.data.source import SourceData, clean_text, compose_text, frame_from_rows
from semrec.data.tables import read_atomic
from semrec.errors import SemrecError
from semrec.report import Reporter

CATEGORIES = {"beauty": "Beauty", "sports": "Sports_and_Outdoors", "toys": "Toys_and_Games"}

SNAP = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
_GITHUB = "https://raw.githubusercontent.com"
_S3REC = f"{_GITHUB}/aHuiWang/CIKM2020-S3Rec/49a890dcb516c9ed3126564495234ea74d5cd566/data"
_P5 = f"{_GITHUB}/Wenyueh/LLM-RecSys-ID/2200ad9fef647ef755c01d6d7e5c5de3082606c5/data"
_RDREC = f"{_GITHUB}/WangXFng/RDRec/4055c3028d3afbd57a0fffd54076825836b7cad7/data"
_RECBOLE_SAE = f"{_GITHUB}/parepic/RecBole_SAE/db83146720b1d9497d8614a16a8cdaa03c7a71b6/dataset"

# The P5 / S3-Rec files, pinned to commits; the digests were measured on those blobs.
P5_FILES = {
    "beauty": (
        RawFile("sequential_data.txt", f"{_S3REC}/Beauty.txt",
                sha256="226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8"),
        RawFile("datamaps.json", f"{_P5}/beauty/datamaps.json",
                sha256="715ab04838ff1ba21238475ed453a89e8c30aa6214b904d27a79e4168fc7b612"),
        RawFile("Amazon_Beauty.item", f"{_RECBOLE_SAE}/Amazon_Beauty/Amazon_Beauty.item",
                sha256="e56c8cbc404b0d82bc30ce9f063e06c0e93615c859c9ca9a522c669d79b74478"),
    ),
    "sports": (
        RawFile("sequential_data.txt", f"{_S3REC}/Sports_and_Outdoors.txt",
                sha256="2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2"),
        RawFile("datamaps.json", f"{_P5}/sports/datamaps.json",
                sha256="4a4d9785ab99a89a499f25023892a647a2280086041c9c9d7169c9dc2ee0b715"),
        RawFile("Amazon_Sports_and_Outdoors.item", None),
    ),
    "toys": (
        RawFile("sequential_data.txt", f"{_RDREC}/toys/sequential.txt",
                sha256="fa1cff57550387966440a93219753b97df62269455b3497612cdca3e8db0ceee"),
        RawFile("datamaps.json", f"{_RDREC}/toys/datamaps.json",
                sha256="a67fd09b5bbca12aea613015d9d1ed99610bb35015d3bbe8cd9e7a3eeda2c90c"),
        RawFile("Amazon_Toys_and_Games.item", None),
    ),
}

_ASIN = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")
_ITEM_SCHEMA = {
    "item_key": pl.Utf8, "title": pl.Utf8, "brand": pl.Utf8, "price": pl.Float64,
    "category_path": pl.List(pl.Utf8), "text": pl.Utf8,
}


def raw_files(variant: str) -> tuple[RawFile, RawFile]:
    category = CATEGORIES[variant]
    return (
        RawFile(f"reviews_{category}_5.json.gz", f"{SNAP}/reviews_{category}_5.json.gz"),
        RawFile(f"meta_{category}.json.gz", f"{SNAP}/meta_{category}.json.gz"),
    )


def load(data, *, root: Path, reporter: Reporter) -> SourceData:
    """One category in the form `data.source_format` names; `root` is the project folder."""
    variant = data.variant or "beauty"
    if variant not in CATEGORIES:
        raise SemrecError(f"data.variant = {variant!r} is not an Amazon category", f"choose one of: {', '.join(CATEGORIES)}")
    files = RawFiles.from_settings(data, f"amazon-{variant}", root=root, reporter=reporter)
    if data.source_format == "p5":
        sequences, datamaps, item_file = P5_FILES[variant]
        return load_p5(
            files.get(sequences),
            files.get(datamaps),
            files.get(item_file, required=False),
            name=f"amazon {variant} (P5 / S3-Rec files)",
            item_file_name=item_file.name,
        )
    reviews, meta = raw_files(variant)
    return load_raw(
        files.get(reviews),
        files.get(meta),
        name=f"amazon {variant} (UCSD 2014 5-core reviews + metadata)",
    )


# -- raw UCSD files ---------------------------------------------------------------------------


def load_raw(reviews_path: Path, meta_path: Path, name: str) -> SourceData:
    interactions = read_reviews(reviews_path)
    meta = read_meta(meta_path, set(interactions["item_key"].unique().to_list()))
    rows = [item_row(asin, record) for asin, record in meta.items()]
    items, filled = _items_frame(rows)
    return SourceData(name, items, interactions, warnings=_filled_warning(filled), notes={"titles_filled": filled})


def read_reviews(path: Path) -> pl.DataFrame:
    users, items, times, ratings = [], [], [], []
    with open_text(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                review = _parse_record(line)
                users.append(str(review["reviewerID"]))
                items.append(str(review["asin"]))
                times.append(int(review["unixReviewTime"]))
                ratings.append(float(review["overall"]) if review.get("overall") is not None else None)
            except (ValueError, SyntaxError, KeyError, TypeError) as e:
                raise SemrecError(
                    f"{path.name} line {number}: not a review record ({type(e).__name__}: {e})",
                    "each line must be one review with reviewerID, asin and unixReviewTime; "
                    f"the file may be damaged: {replace_hint(path)}",
                ) from e
    return pl.DataFrame(
        {"user_key": users, "item_key": items, "timestamp": times, "rating": ratings},
        schema={"user_key": pl.Utf8, "item_key": pl.Utf8, "timestamp": pl.Int64, "rating": pl.Float64},
    )


def _parse_record(line: str) -> dict:
    """A review line is JSON; some mirrors write them as Python literals like the metadata."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = ast.literal_eval(line.strip())
    if not isinstance(record, dict):
        raise TypeError(f"expected a dict, got {type(record).__name__}")
    return record


def read_meta(path: Path, wanted: set[str]) -> dict[str, dict]:
    """The metadata records of the `wanted` ASINs. Lines of other items are skipped unparsed."""
    records: dict[str, dict] = {}
    with open_text(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            found = _ASIN.search(line)
            if found and found.group(1) not in wanted:
                continue
            try:
                record = ast.literal_eval(line.strip())
            except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
                raise SemrecError(
                    f"{path.name} line {number}: not a Python literal ({type(e).__name__}: {e})",
                    f"the metadata file is damaged or not the UCSD 2014 release: {replace_hint(path)}",
                ) from e
            if not isinstance(record, dict) or "asin" not in record:
                raise SemrecError(f"{path.name} line {number}: not a product record (a dict with an 'asin')")
            if record["asin"] in wanted:
                records[record["asin"]] = record
    return records


def item_row(asin: str, record: dict) -> dict:
    categories = record.get("categories") or []
    path = categories[0] if categories and isinstance(categories[0], (list, tuple)) else categories
    return {
        "item_key": asin,
        "title": clean_text(record.get("title")),
        "brand": clean_text(record.get("brand")),
        "price": _price(record.get("price")),
        "category_path": [c for c in (clean_text(c) for c in path) if c],
    }


def _price(value) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _items_frame(rows: list[dict]) -> tuple[pl.DataFrame, int]:
    """Fill empty titles, compose the text; (items, number of titles filled)."""
    filled = 0
    for row in rows:
        if not row["title"]:
            filled += 1
            leaf = row["category_path"][-1] if row["category_path"] else ""
            row["title"] = f"{leaf} {row['item_key']}".strip()
        price = f"${row['price']:.2f}" if row["price"] is not None else ""
        row["text"] = compose_text(
            row["title"], ("Brand", row["brand"]), ("Categories", " > ".join(row["category_path"])), ("Price", price)
        )
    return frame_from_rows(rows, _ITEM_SCHEMA), filled


def _filled_warning(filled: int) -> list[str]:
    if not filled:
        return []
    return [f"{filled} items have no title in the metadata; their title is '<category leaf> <ASIN>'"]


# -- P5 / S3-Rec files ------------------------------------------------------------------------


def load_p5(sequences_path: Path, datamaps_path: Path, item_path: Path | None, name: str, item_file_name: str) -> SourceData:
    datamaps = _read_json(datamaps_path)
    id2item = datamaps.get("id2item")
    if not isinstance(id2item, dict):
        raise SemrecError(f"{datamaps_path.name}: no 'id2item' map", "this is not a P5 datamaps.json")
    id2user = datamaps.get("id2user") or {}
    sequences = read_sequences(sequences_path)
    user_keys, item_keys = [], []
    for number, user, items in sequences:
        for item in items:
            asin = id2item.get(str(item))
            if asin is None:
                raise SemrecError(f"{sequences_path.name} line {number}: item {item} is not in {datamaps_path.name} id2item")
            item_keys.append(asin)
        user_keys += [id2user.get(str(user), str(user))] * len(items)
    interactions = pl.DataFrame(
        {"user_key": user_keys, "item_key": item_keys, "timestamp": [None] * len(item_keys)},
        schema={"user_key": pl.Utf8, "item_key": pl.Utf8, "timestamp": pl.Int64},
    )
    order = sorted(id2item, key=int)
    warnings: list[str] = []
    metadata = read_item_metadata(item_path) if item_path is not None else {}
    if item_path is None:
        warnings.append(
            f"no item metadata ({item_file_name} not found): titles and text are the ASINs, category paths are empty"
        )
    rows = []
    for key in order:
        asin = id2item[key]
        row = metadata.get(asin) or {"item_key": asin, "title": asin, "brand": "", "price": None, "category_path": []}
        rows.append(row)
    missing = sum(1 for key in order if id2item[key] not in metadata)
    if item_path is not None and missing:
        warnings.append(f"{missing} items are not in {item_path.name}: their title is the ASIN")
    items, filled = _items_frame(rows)
    warnings += _filled_warning(filled)
    return SourceData(name, items, interactions, fixed_ids=True, warnings=warnings, notes={"titles_filled": filled})


def _read_json(path: Path):
    try:
        with open_text(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise SemrecError(f"{path.name}: not valid JSON ({e})", f"the file is damaged: {replace_hint(path)}") from e


def read_sequences(path: Path) -> list[tuple[int, int, list[int]]]:
    """(line number, P5 user id, item ids) per line, sorted by user id."""
    sequences = []
    with open_text(path) as f:
        for number, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) < 2 or not all(t.isdigit() for t in tokens):
                raise SemrecError(f"{path.name} line {number}: expected 'user item item ...' as whole numbers, got {line.strip()[:60]!r}")
            sequences.append((number, int(tokens[0]), [int(t) for t in tokens[1:]]))
    sequences.sort(key=lambda s: s[1])
    for (_, a, _), (number, b, _) in zip(sequences, sequences[1:]):
        if a == b:
            raise SemrecError(f"{path.name} line {number}: user {b} appears on two lines")
    return sequences


def read_item_metadata(path: Path) -> dict[str, dict]:
    """Item rows from a RecBole atomic `.item` file (item_id = ASIN, title, brand, price, categories)."""
    table = read_atomic(path)
    if "item_id" not in table.columns:
        raise SemrecError(f"{path.name}: no item_id column", f"columns found: {', '.join(table.columns)}")
    records = {}
    for record in table.iter_rows(named=True):
        categories = record.get("categories") or ""
        try:
            path_list = ast.literal_eval(f"[{categories}]") if categories.strip() else []
        except (ValueError, SyntaxError) as e:
            raise SemrecError(f"{path.name} line {record['_line']}, column categories: not a quoted list ({e})") from e
        records[record["item_id"]] = {
            "item_key": record["item_id"],
            "title": clean_text(record.get("title")),
            "brand": clean_text(record.get("brand")),
            "price": _price(record.get("price")),
            "category_path": first_path([clean_text(c) for c in path_list if isinstance(c, str)]),
        }
    return records


def first_path(flat: list[str]) -> list[str]:
    """A flattened list of category paths, cut where the root comes round again: the first path."""
    flat = [c for c in flat if c]
    for i, name in enumerate(flat[1:], 1):
        if name == flat[0]:
            return flat[:i]
    return flat
