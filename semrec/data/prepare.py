"""The download stage: a source's raw tables -> items, interactions and leave-one-out splits.

Every source module has a `load(...) -> SourceData` (see `source.py`); what all sources share lives
here once: dropping non-positive ratings, the iterative k-core filter, ordering each user's
items in time, dense ids by first appearance, the splits, and the key figures.

Ordering rule. Each user's items are sorted by time with ties kept in file order (a stable
sort). A row without a timestamp takes, for sorting only, the timestamp of the nearest earlier
row of the same user in the file (or, when it has none, of the nearest later one): rows without
a time stay next to the rows they were written beside. Their `timestamp` stays null.

Dense ids. Users are numbered in order of their first row in the file; items in order of first
appearance when the users' sorted sequences are read one after the other (as P5 / S3-Rec do).
A source whose ids are fixed upstream (the P5 files) passes `fixed_ids=True`: its items table
order is the item order, and its interactions are already in user order and in time order.
"""

from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from semrec.artifacts import INTERACTIONS, ITEMS, SPLITS
from semrec.data import amazon, custom, demo, kuairand, movielens
from semrec.data.source import SourceData
from semrec.errors import SemrecError
from semrec.io import atomic_path, write_parquet
from semrec.report import Reporter

SOURCES = ("demo", "amazon", "movielens", "kuairand", "custom")
_DOWNLOADED = {"amazon": amazon, "movielens": movielens, "kuairand": kuairand}


def run_download(ws, run) -> dict:
    data = ws.settings.data
    source = load_source(data, root=ws.root, seed=ws.settings.project.seed, reporter=ws.reporter)
    ws.reporter.info(f"preparing {source.name}")
    items, interactions, warnings = prepare_tables(
        source,
        min_interactions=data.min_interactions,
        positive_rating_min=data.positive_rating_min,
    )
    splits = leave_one_out(interactions)
    write_parquet(items, ws.path(ITEMS))
    for frame, artifact in ((interactions, INTERACTIONS), (splits, SPLITS)):
        with atomic_path(ws.path(artifact)) as tmp:
            frame.write_parquet(tmp, compression="lz4")  # twice as fast as zstd on 32M rows
    figures = describe(items, interactions, splits)
    figures["source"] = source.name
    figures.update(source.notes)
    figures["warnings"] = source.warnings + warnings
    for message in figures["warnings"]:
        ws.reporter.warn(message)
    return figures


def load_source(data, *, root: Path, seed: int, reporter: Reporter) -> SourceData:
    """The tables of the source `data.dataset` names, each source given only what it reads.

    `root` is the project folder (relative paths in the settings start there), `seed` makes the demo."""
    if data.dataset == "demo":
        return demo.load(data, seed=seed)
    if data.dataset == "custom":
        return custom.load(data.custom, root=root)
    if data.dataset in _DOWNLOADED:
        return _DOWNLOADED[data.dataset].load(data, root=root, reporter=reporter)
    raise SemrecError(f"data.dataset = {data.dataset!r} is not a source", f"choose one of: {', '.join(SOURCES)}")


class CodedInteractions(NamedTuple):
    """Interaction rows as dense integer codes (numpy), with the keys each code stands for."""

    users: np.ndarray  # (n,) user code of each row
    user_keys: pl.Series  # the distinct user keys, in code order
    items: np.ndarray  # (n,) item code of each row
    item_keys: pl.Series  # the distinct item keys, in code order
    timestamps: pl.Series  # (n,) Int64, nullable

    @classmethod
    def encode(cls, frame: pl.DataFrame) -> "CodedInteractions":
        """Codes for a `user_key`, `item_key`, `timestamp` frame (which the caller then lets go)."""
        users, user_keys = dense_codes(frame["user_key"])
        items, item_keys = dense_codes(frame["item_key"])
        return cls(users, user_keys, items, item_keys, frame["timestamp"])

    def take(self, rows: np.ndarray) -> "CodedInteractions":
        """The given rows, in the given order; the keys (and so the codes) stay as they are."""
        return self._replace(users=self.users[rows], items=self.items[rows], timestamps=self.timestamps.gather(rows))


def prepare_tables(
    source: SourceData, *, min_interactions: int, positive_rating_min: float
) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """Filter, order and number: (items, interactions, warnings) in the artifact shapes.

    Keys become dense integer codes once; the k-core, the ordering and the numbering then run on
    numpy arrays (bincounts, one stable sort), which keeps 32 million rows within a minute. Each
    step rebinds `coded`, so the arrays of the step before are freed as soon as it is done."""
    check_items(source)
    coded = CodedInteractions.encode(positive_interactions(source, positive_rating_min))
    items, rows, warnings = with_unknown_items(source, coded)
    rows = rows[k_core(coded.users[rows], coded.items[rows], min_interactions)]
    if rows.size == 0:
        raise SemrecError(
            f"{source.name}: nothing is left after the {min_interactions}-core filter", "lower data.min_interactions"
        )
    coded = coded.take(rows)
    del rows
    user_rank = rank_by_first(coded.users, len(coded.user_keys))
    coded = coded.take(time_order(user_rank[coded.users], coded.timestamps, fixed=source.fixed_ids))
    if source.fixed_ids:
        item_rank = rank_in_table(coded.items, coded.item_keys, items)
    else:
        item_rank = rank_by_first(coded.items, len(coded.item_keys))
    interactions = numbered_interactions(coded, user_rank, item_rank)
    return numbered_items(items, coded, item_rank), interactions, warnings


def check_items(source: SourceData) -> None:
    if source.items.height == 0:
        raise SemrecError(f"{source.name}: the items table is empty")
    duplicates = source.items.filter(pl.col("item_key").is_duplicated())["item_key"].unique()
    if len(duplicates):
        raise SemrecError(f"{source.name}: duplicate item ids, e.g. {duplicates[0]!r}")


def positive_interactions(source: SourceData, positive_rating_min: float) -> pl.DataFrame:
    """`user_key`, `item_key`, `timestamp` of the rows whose rating (if the source has one) counts as positive."""
    inter = source.interactions.lazy()
    filtered = "rating" in inter.collect_schema() and positive_rating_min > 0
    if filtered:
        inter = inter.filter(pl.col("rating") >= positive_rating_min)
    inter = inter.select("user_key", "item_key", pl.col("timestamp").cast(pl.Int64)).collect()
    if inter.height == 0 and filtered:
        raise SemrecError(
            f"{source.name}: no rating reaches data.positive_rating_min = {positive_rating_min:g}", "lower data.positive_rating_min"
        )
    if inter.height == 0:
        raise SemrecError(f"{source.name}: there are no interactions", "check that the interactions file holds rows")
    if inter["user_key"].null_count() or inter["item_key"].null_count():
        raise SemrecError(f"{source.name}: an interaction has no user or item id")
    return inter


def with_unknown_items(source: SourceData, coded: CodedInteractions) -> tuple[pl.DataFrame, np.ndarray, list[str]]:
    """(items, rows kept, warnings) once interactions with an item missing from the items table are dealt with.

    The source says which: `unknown_items="drop"` drops their rows; "fallback" keeps them and
    gives each such item a row whose title and text are its id."""
    items = source.items
    rows = np.arange(coded.users.size, dtype=_index_dtype(coded.users.size))
    unknown = ~coded.item_keys.is_in(items["item_key"].implode()).to_numpy()
    if not unknown.any():
        return items, rows, []
    missing = coded.item_keys.filter(pl.Series(unknown))
    if source.unknown_items == "drop":
        dropped = f"{len(missing)} items have interactions but no metadata; their interactions were dropped"
        return items, rows[~unknown[coded.items]], [dropped]
    items = pl.concat([items, fallback_items(missing, items.schema)], how="diagonal_relaxed")
    return items, rows, [f"{len(missing)} items have no metadata; their title and text are their id"]


def numbered_interactions(coded: CodedInteractions, user_rank: np.ndarray, item_rank: np.ndarray) -> pl.DataFrame:
    """The interactions artifact from rows in final order: dense ids and each row's position in its user's sequence."""
    user = user_rank[coded.users]
    counts = np.bincount(user)
    position = np.arange(user.size, dtype=np.int64) - (np.cumsum(counts) - counts)[user]
    return pl.DataFrame(
        {
            "user": user,
            "user_key": coded.user_keys.cast(pl.Utf8).gather(coded.users),
            "item": item_rank[coded.items],
            "timestamp": coded.timestamps,
            "position": position,
        },
        schema={"user": pl.Int64, "user_key": pl.Utf8, "item": pl.Int64, "timestamp": pl.Int64, "position": pl.Int64},
    ).with_columns(pl.col("user").set_sorted())  # lets the group-bys of the splits take their fast path


def numbered_items(items: pl.DataFrame, coded: CodedInteractions, item_rank: np.ndarray) -> pl.DataFrame:
    """The items artifact: one row per item that still has an interaction, in id order, with its dense id."""
    present = np.flatnonzero(np.bincount(coded.items, minlength=len(coded.item_keys)))
    by_id = present[np.argsort(item_rank[present])]
    numbered = pl.DataFrame({"item": np.arange(by_id.size, dtype=np.int64), "item_key": coded.item_keys.gather(by_id)})
    items = numbered.join(items, on="item_key", how="left", maintain_order="left")
    return items.with_columns(pl.col("item_key").cast(pl.Utf8))


def _index_dtype(n: int):
    return np.int32 if n < 2**31 else np.int64


def dense_codes(keys: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """(code of each row, the distinct keys in code order). Integer keys in a compact range use a lookup
    table (linear); others are ranked (a sort)."""
    if keys.dtype.is_integer():
        values = keys.to_numpy()
        low, high = int(values.min()), int(values.max())
        if high - low <= 4 * values.size + 1_000_000:
            # offsets in [0, high - low], in the key's own width when that holds them (less memory)
            width = values.dtype if high - low <= np.iinfo(values.dtype).max else np.dtype(np.int64)
            offsets = values.astype(width, copy=False) - width.type(low)
            present = np.zeros(high - low + 1, dtype=bool)
            present[offsets] = True
            lookup = (np.cumsum(present) - 1).astype(np.int32)
            return lookup[offsets], pl.Series(keys.name, np.flatnonzero(present) + low).cast(keys.dtype)
    codes = keys.rank("dense").to_numpy().astype(np.int32) - 1
    return codes, keys.unique().sort()


def k_core(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Iterative k-core over interaction rows given as user and item codes: the indices of the rows kept.

    Each round drops, at once, every row of a user or an item with fewer than k rows (as S3-Rec's
    filter does), until no user or item is below k."""
    rows = np.arange(users.size, dtype=_index_dtype(users.size))
    if k <= 1:
        return rows
    while rows.size:
        drop = (np.bincount(users) < k)[users] | (np.bincount(items) < k)[items]
        if not drop.any():
            break
        keep = ~drop
        rows, users, items = rows[keep], users[keep], items[keep]
    return rows


def first_occurrence(codes: np.ndarray, size: int) -> np.ndarray:
    """Index of the first row of each code 0..size-1 (len(codes) for a code that does not occur)."""
    n = codes.size
    first = np.full(size, n, dtype=np.int64)
    first[codes[::-1]] = np.arange(n - 1, -1, -1)
    # numpy does not promise which write wins for repeated indices: keep the result only if it is the minimum
    if not (first[codes] <= np.arange(n)).all():
        first = np.full(size, n, dtype=np.int64)
        np.minimum.at(first, codes, np.arange(n))
    return first


def rank_by_first(codes: np.ndarray, size: int) -> np.ndarray:
    """code -> 0, 1, ... in order of first occurrence (codes that do not occur come last)."""
    rank = np.empty(size, dtype=np.int32)
    rank[np.argsort(first_occurrence(codes, size), kind="stable")] = np.arange(size)
    return rank


def rank_in_table(codes: np.ndarray, keys: pl.Series, items: pl.DataFrame) -> np.ndarray:
    """code -> 0, 1, ... in the order of the items table (for sources whose item ids are fixed upstream)."""
    table_row = (
        pl.DataFrame({"item_key": keys})
        .join(items.select("item_key").with_row_index("_row"), on="item_key", how="left", maintain_order="left")["_row"]
        .to_numpy()
        .astype(np.int64)
    )
    table_row[np.bincount(codes, minlength=keys.len()) == 0] = np.iinfo(np.int64).max
    rank = np.empty(keys.len(), dtype=np.int32)
    rank[np.argsort(table_row, kind="stable")] = np.arange(keys.len())
    return rank


def time_order(user_rank: np.ndarray, timestamps: pl.Series, fixed: bool) -> np.ndarray:
    """The permutation that sorts rows (given in file order) by user, then time, ties in file order.

    Rows without a timestamp sort with a neighbour's time (see the module docstring)."""
    if fixed:
        return np.argsort(user_rank, kind="stable")
    if timestamps.null_count():
        filled = pl.DataFrame({"user": user_rank, "t": timestamps}).select(
            pl.col("t").forward_fill().backward_fill().over("user")
        )
        timestamps = filled.to_series().fill_null(0)  # a user with no time at all keeps file order
    times = timestamps.to_numpy() - timestamps.min()
    span = int(times.max()) + 1
    if int(user_rank.max()) >= np.iinfo(np.int64).max // span:
        return np.lexsort((times, user_rank))
    key = user_rank.astype(np.int64)  # one int64 key (user, time): faster than lexsort
    key *= span
    key += times
    del times
    return np.argsort(key, kind="stable")


def fallback_items(keys: pl.Series, schema) -> pl.DataFrame:
    text = keys.cast(pl.Utf8)
    return pl.DataFrame(
        {"item_key": keys, "title": text, "text": text, "category_path": [[] for _ in range(len(keys))]},
        schema_overrides={"item_key": schema["item_key"], "category_path": pl.List(pl.Utf8)},
    )


def leave_one_out(interactions: pl.DataFrame) -> pl.DataFrame:
    """One row per user with at least 3 items: train = all but the last two, valid, test (TIGER/P5)."""
    return (
        interactions.group_by("user", maintain_order=True)
        .agg(pl.col("item"))
        .filter(pl.col("item").list.len() >= 3)
        .select(
            "user",
            train=pl.col("item").list.slice(0, pl.col("item").list.len() - 2),
            valid=pl.col("item").list.get(-2),
            test=pl.col("item").list.get(-1),
        )
    )


def describe(items: pl.DataFrame, interactions: pl.DataFrame, splits: pl.DataFrame) -> dict:
    lengths = interactions.group_by("user").len()["len"]
    return {
        "users": int(lengths.len()),
        "items": items.height,
        "interactions": interactions.height,
        "sequence_length": {
            "min": int(lengths.min()),
            "mean": round(float(lengths.mean()), 2),
            "median": float(lengths.median()),
            "max": int(lengths.max()),
        },
        "split_users": splits.height,
    }
