"""The `tokenize` stage: every item's semantic ID (code tuple + collision token), cold start, and lookup.

Items whose code tuples are equal get collision tokens 0, 1, 2, ... in a fixed order: by the
distance of the item's latent to its quantised vector (the best-served item keeps 0), then by
item id. So (code_1, ..., code_L, dedup) is unique per item and reproducible.
"""

from pathlib import Path

import numpy as np
import polars as pl
import torch

from semrec.data.tables import read_table
from semrec.errors import SemrecError
from semrec.tags.table import read_item_tags, read_tags
from semrec.tokenizer.fit import load_tokenizer
from semrec.tokenizer.health import tokenizer_health
from semrec.artifacts import EMBEDDINGS, ITEMS, SEMANTIC_IDS, TAGS
from semrec.io import atomic_path, write_parquet

SHOW_NEIGHBOURS = 10


def collision_tokens(codes: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
    """(N, L) codes and (N,) latent-to-codeword distances -> (N,) collision token: the rank of
    each item within its tuple group, ordered by distance, then item id."""
    codes_np = codes.cpu().numpy()
    item = np.arange(codes_np.shape[0])
    keys = [item, gaps.cpu().numpy()] + [codes_np[:, level] for level in reversed(range(codes_np.shape[1]))]
    order = np.lexsort(keys)  # the last key sorts first: code_1, ..., code_L, gap, item
    ordered = codes_np[order]
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = (ordered[1:] != ordered[:-1]).any(1)
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    dedup = np.empty(len(order), dtype=np.int64)
    dedup[order] = np.arange(len(order)) - group_start
    return torch.from_numpy(dedup)


def semantic_id_frame(items: torch.Tensor, codes: torch.Tensor, dedup: torch.Tensor) -> pl.DataFrame:
    columns = {"item": pl.Series(items.tolist(), dtype=pl.Int64)}
    for level in range(codes.shape[1]):
        columns[f"code_{level + 1}"] = pl.Series(codes[:, level].tolist(), dtype=pl.Int64)
    columns["dedup"] = pl.Series(dedup.tolist(), dtype=pl.Int64)
    return pl.DataFrame(columns)


def _tags_for_health(ws, n_items: int) -> list[list[str]] | None:
    """Tags of every item for the NMI figures; None (with a note) when the tags do not cover them."""
    try:
        return read_tags(ws.path(TAGS), n_items)
    except SemrecError:
        ws.reporter.warn(f"{ws.path(TAGS)} does not cover all {n_items} items; the NMI with the tags is left out")
        return None


def run_tokenize(ws, run) -> dict:
    from semrec.tokenizer.inputs import tokenizer_inputs

    tokenizer = load_tokenizer(ws)
    embeddings, _ = tokenizer_inputs(ws)
    codes, gaps, _ = tokenizer.assign(embeddings)
    dedup = collision_tokens(codes, gaps)
    write_parquet(semantic_id_frame(torch.arange(codes.shape[0]), codes, dedup), ws.path(SEMANTIC_IDS))
    health = tokenizer_health(codes, tokenizer.config["codebook_size"], _tags_for_health(ws, codes.shape[0]))
    figures = {
        "kind": tokenizer.config["kind"],
        "items": health["items"],
        "collision_rate": round(health["collision_rate"], 4),
        "largest_collision_group": health["largest_collision_group"],
        "max_dedup": int(dedup.max()) if dedup.numel() else 0,
        "usage": [round(u, 4) for u in health["usage"]],
        "perplexity": [round(p, 1) for p in health["perplexity"]],
    }
    if "nmi" in health:
        figures["nmi"] = [round(v, 4) for v in health["nmi"]]
    return figures


# -- cold start ---------------------------------------------------------------------------------
def _align_new_items(new: pl.DataFrame, items: pl.DataFrame, path: Path) -> pl.DataFrame:
    """The new rows in the items table's schema: dense ids after the existing ones, missing columns empty."""
    missing = [c for c in ("item_key", "title", "text") if c not in new.columns]
    if missing:
        raise SemrecError(
            f"{path} lacks the column(s) {', '.join(missing)}",
            f"give at least item_key, title and text (the items table has: {', '.join(items.columns)})",
        )
    keys = new["item_key"].cast(pl.Utf8)
    if keys.null_count():
        raise SemrecError(f"{path} has rows without an item_key", "give every new item a key")
    repeated = keys.filter(keys.is_duplicated()).unique().to_list()
    known = keys.filter(keys.is_in(items["item_key"].implode())).to_list()
    if repeated or known:
        listed = ", ".join(sorted(set(repeated + known))[:5])
        raise SemrecError(
            f"{path}: item keys already in the catalogue or repeated in the file: {listed}",
            "cold start only adds new items; drop those rows (existing items keep their IDs)",
        )
    first = items.height
    columns = {"item": pl.Series(range(first, first + new.height), dtype=pl.Int64)}
    for name, dtype in items.schema.items():
        if name == "item":
            continue
        if name in new.columns:
            try:
                columns[name] = new[name].cast(dtype)
            except pl.exceptions.PolarsError as e:
                raise SemrecError(f"{path}: column {name} cannot be read as {dtype}: {e}", f"write {name} as {dtype}") from e
        elif name == "category_path":
            columns[name] = pl.Series([[] for _ in range(new.height)], dtype=dtype)
        else:
            columns[name] = pl.Series([None] * new.height, dtype=dtype)
    return pl.DataFrame(columns)


def tokenize_new_items(ws, path) -> dict:
    """Give semantic IDs to the new items in `path` with the frozen tokenizer and append them.

    The items are embedded with the project's model, coded, and appended to items.parquet,
    embeddings.safetensors and semantic_ids.parquet; existing IDs never change. A new item
    whose tuple is taken gets the next free collision token of that tuple.
    """
    from safetensors.torch import save_file

    from semrec.embed import CachedEncoder, item_texts, load_embeddings
    from semrec.tokenizer.inputs import with_collaborative

    path = Path(path)
    ws.ensure("tokenize")
    items = pl.read_parquet(ws.path(ITEMS))
    new = _align_new_items(read_table(path, infer_types=True, what="new items"), items, path)
    if new.height == 0:
        return {"added": 0, "items": []}
    encoder = CachedEncoder(ws.settings.embed, ws.reporter)
    vectors = encoder.encode(item_texts(new, ws.settings.embed.template))  # (M, d)
    encoder.save()
    embeddings, metadata = load_embeddings(ws)
    tokenizer = load_tokenizer(ws)
    all_embeddings = torch.cat([embeddings, vectors.to(embeddings.dtype)])
    codes, gaps, _ = tokenizer.assign(with_collaborative(ws, all_embeddings)[len(embeddings):])
    ids = pl.read_parquet(ws.path(SEMANTIC_IDS))
    code_columns = [f"code_{level + 1}" for level in range(codes.shape[1])]
    taken = {tuple(row[:-1]): row[-1] for row in ids.group_by(code_columns).agg(pl.col("dedup").max()).iter_rows()}
    rank = collision_tokens(codes, gaps)  # order among the new items of one tuple
    dedup = torch.tensor(
        [taken.get(tuple(c), -1) + 1 + int(r) for c, r in zip(codes.tolist(), rank.tolist())], dtype=torch.long
    )
    new_ids = semantic_id_frame(torch.tensor(new["item"].to_list()), codes, dedup)
    metadata = {**metadata, "items": str(all_embeddings.shape[0])}
    with (
        atomic_path(ws.path(ITEMS)) as items_tmp,
        atomic_path(ws.path(EMBEDDINGS)) as embeddings_tmp,
        atomic_path(ws.path(SEMANTIC_IDS)) as ids_tmp,
    ):
        pl.concat([ids, new_ids]).write_parquet(ids_tmp)
        save_file({"embeddings": all_embeddings.contiguous()}, str(embeddings_tmp), metadata=metadata)
        pl.concat([items, new]).write_parquet(items_tmp)
    ws.record_append(["download", "embed", "tokenize"])
    ws.reporter.info(f"added {new.height} items with semantic IDs; existing IDs are unchanged")
    rows = new.select("item", "item_key").join(new_ids, on="item").sort("item")
    return {
        "added": new.height,
        "collisions": int((dedup > 0).sum()),
        "items": [
            {"item_key": r["item_key"], "item": r["item"], "semantic_id": [r[c] for c in code_columns] + [r["dedup"]]}
            for r in rows.iter_rows(named=True)
        ],
    }


# -- lookup -------------------------------------------------------------------------------------
def show_item(ws, item_key: str) -> dict:
    """An item's semantic ID, its tag path, and the items sharing its first one and two codes."""
    for artifact, command in ((ITEMS, "semrec download"), (SEMANTIC_IDS, "semrec tokenize")):
        if not ws.path(artifact).exists():
            raise SemrecError(f"no {ws.path(artifact)}", f"run `{command}` first")
    items = pl.read_parquet(ws.path(ITEMS), columns=["item", "item_key", "title"])
    match = items.filter(pl.col("item_key") == item_key)
    if match.height == 0:
        raise SemrecError(f"no item with item_key {item_key!r} in {ws.path(ITEMS)}", "item keys are the dataset's ids, e.g. an ASIN")
    item = match["item"][0]
    ids = pl.read_parquet(ws.path(SEMANTIC_IDS)).join(items, on="item")
    code_columns = [c for c in ids.columns if c.startswith("code_")]
    own = ids.filter(pl.col("item") == item).row(0, named=True)
    result = {
        "item_key": item_key,
        "item": item,
        "title": own["title"],
        "semantic_id": [own[c] for c in code_columns] + [own["dedup"]],
    }
    tags = read_item_tags(ws.path(TAGS), [item]).get(item)
    if tags is not None:
        result["tags"] = tags.tags
    for depth in (1, 2):
        prefix = pl.all_horizontal([pl.col(c) == own[c] for c in code_columns[:depth]])
        others = ids.filter(prefix & (pl.col("item") != item)).sort("item")
        result[f"sharing_first_{depth}"] = {
            "count": others.height,
            "examples": [
                {"item_key": r["item_key"], "title": r["title"], "semantic_id": [r[c] for c in code_columns] + [r["dedup"]]}
                for r in others.head(SHOW_NEIGHBOURS).iter_rows(named=True)
            ],
        }
    return result
