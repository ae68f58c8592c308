"""What the report shows, read from the artifacts that exist: one function per section, each
returning plain figures (numbers, lists, dicts), or None when the artifacts it needs are absent.

Nothing here draws; `charts` does. Large sets are cut down here so that the page stays small and
draws fast: the 2-D projection samples `SCATTER_POINTS` items, the popularity curve keeps at most
`CURVE_POINTS` log-spaced ranks, and the trees keep their `TREE_NODES` largest nodes (a sunburst's
drawing time grows with its slices: 1,500 took seconds where 400 take a fraction of one).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from semrec.artifacts import EMBEDDINGS, EVAL_METRICS, INTERACTIONS, ITEMS, RETRIEVER, SASREC, SEMANTIC_IDS, TAGS, TOKENIZER
from semrec.tags import SEPARATOR, join_path, tag_columns_in, tag_label
from semrec.tags.metadata import category_levels
from semrec.tags.table import read_tags

SCATTER_POINTS = 1000
CURVE_POINTS = 400
TREE_NODES = 400
TOP_TAGS = 12  # colours of the projection; every other first-level tag is drawn as "other"
USERS_SHOWN = 4
HISTORY_SHOWN = 8
RECOMMENDED = 10
NO_TAG = "(none)"


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class Tagging:
    """Every item's tag path per level (`levels[l][item]`), where it came from, and the share of
    items whose level-l tag is a real one (not a filler or a gap)."""

    levels: list[list[str]]
    source: str
    coverage: list[float]

    def first_level(self) -> list[str]:
        return [tag_label(tag) for tag in self.levels[0]]


def item_tags(ws, items: pl.DataFrame) -> Tagging | None:
    """The items' tags from tags.parquet, else from their category paths (as the tag stage would
    read them), else None."""
    levels = read_tags(ws.path(TAGS), items.height)
    if levels is not None:
        frame = pl.read_parquet(ws.path(TAGS)).sort("item")
        sources = [f"source_{c.removeprefix('tag_')}" for c in tag_columns_in(frame.columns)]
        coverage = [float((frame[c] != "fallback").mean()) if c in frame.columns else 1.0 for c in sources]
        return Tagging(levels, "tags.parquet (the tag stage)", coverage)
    if "category_path" not in items.columns:
        return None
    grid, _ = category_levels(items["category_path"].to_list(), ws.settings.tag.levels, ws.settings.tag.drop_root)
    if not any(row and row[0] for row in grid):
        return None
    paths = [join_path([name or NO_TAG for name in row]) for row in grid]
    levels = [[path[level] for path in paths] for level in range(len(grid[0]))]
    coverage = [sum(row[level] is not None for row in grid) / len(grid) for level in range(len(grid[0]))]
    return Tagging(levels, "the items' category paths (the tag stage has not run)", coverage)


def data_section(items: pl.DataFrame, interactions: pl.DataFrame) -> dict:
    lengths = interactions.group_by("user").len()["len"]
    length_counts = lengths.value_counts().sort("len")
    popularity = np.sort(interactions.group_by("item").len()["len"].to_numpy())[::-1]
    ranks = np.unique(np.geomspace(1, len(popularity), min(CURVE_POINTS, len(popularity))).astype(int))
    top = max(1, len(popularity) // 5)
    return {
        "users": lengths.len(),
        "items": items.height,
        "interactions": interactions.height,
        "density": interactions.height / max(1, lengths.len() * items.height),
        "median_length": float(lengths.median()),
        "top_fifth_share": float(popularity[:top].sum() / max(1, popularity.sum())),
        "lengths": {"length": length_counts["len"].to_list(), "users": length_counts["count"].to_list()},
        "popularity": {"rank": ranks.tolist(), "interactions": popularity[ranks - 1].tolist()},
    }


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, size), replace=False))


def embeddings_section(ws, titles: list[str], tagging: Tagging | None, seed: int) -> dict | None:
    """A 2-D PCA projection of a sample of item embeddings, coloured by the first tag level."""
    path = ws.path(EMBEDDINGS)
    if not path.is_file():
        return None
    from safetensors.numpy import load_file

    x = load_file(str(path))["embeddings"].astype(np.float32)
    rows = _sample(len(x), SCATTER_POINTS, seed)
    centred = x[rows] - x.mean(axis=0)
    _, singular, basis = np.linalg.svd(centred, full_matrices=False)
    points = centred @ basis[:2].T
    explained = (singular[:2] ** 2 / (singular**2).sum()).tolist()
    labels = None
    if tagging is not None:
        first = tagging.first_level()
        names, counts = np.unique(first, return_counts=True)
        common = set(names[np.argsort(-counts)][:TOP_TAGS])
        labels = [first[i] if first[i] in common else "other" for i in rows]
    return {
        "x": points[:, 0].round(4).tolist(), "y": points[:, 1].round(4).tolist(),
        "label": labels, "title": [titles[i][:70] for i in rows],
        "explained": explained, "shown": len(rows), "items": len(x), "dim": x.shape[1],
    }


def _tree(paths: list[list[str]]) -> dict:
    """Sunburst nodes (ids, labels, parents, values) of the given per-level path strings, the
    `TREE_NODES` largest kept (a parent is never smaller than its children, so it is kept too)."""
    ids, parents, values = [], [], []
    for level, tags in enumerate(paths):
        names, counts = np.unique(np.asarray(tags, dtype=object).astype(str), return_counts=True)
        for name, count in zip(names, counts):
            ids.append(name)
            parents.append(name.rsplit(SEPARATOR, 1)[0] if level else "")
            values.append(int(count))
    keep = sorted(range(len(ids)), key=lambda i: -values[i])[:TREE_NODES]
    keep = sorted(keep)
    return {"ids": [ids[i] for i in keep], "labels": [tag_label(ids[i]) for i in keep],
            "parents": [parents[i] for i in keep], "values": [values[i] for i in keep]}


def tags_section(tagging: Tagging | None) -> dict | None:
    if tagging is None:
        return None
    return {
        "source": tagging.source,
        "tree": _tree(tagging.levels),
        "coverage": tagging.coverage,
        "distinct": [len(set(level)) for level in tagging.levels],
    }


def _curves(history: list[dict], skip=("step", "lr")) -> dict[str, dict]:
    """{figure name: {"step": [...], "value": [...]}} of a training history's entries."""
    curves: dict[str, dict] = {}
    for entry in history:
        for key, value in entry.items():
            if key not in skip and isinstance(value, (int, float)):
                curve = curves.setdefault(key, {"step": [], "value": []})
                curve["step"].append(entry["step"])
                curve["value"].append(value)
    return curves


def tokenizer_section(ws, tagging: Tagging | None) -> dict | None:
    import torch

    from semrec.tokenizer.health import collision_groups, tokenizer_health

    metrics = read_json(ws.path(TOKENIZER) / "metrics.json")
    config = read_json(ws.path(TOKENIZER) / "config.json") or {}
    path = ws.path(SEMANTIC_IDS)
    if metrics is None and not path.is_file():
        return None
    section: dict = {"kind": config.get("kind") or (metrics or {}).get("kind"),
                     "curves": _curves((metrics or {}).get("history", []))}
    if path.is_file():
        ids = pl.read_parquet(path).sort("item")
        columns = sorted((c for c in ids.columns if c.startswith("code_")), key=lambda c: int(c[5:]))
        codes = ids.select(columns).to_numpy()
        codebook = int(config.get("codebook_size") or codes.max() + 1)
        levels = tagging.levels if tagging is not None and len(tagging.levels[0]) == len(codes) else None
        health = tokenizer_health(torch.from_numpy(codes), codebook, levels)
        _, sizes = collision_groups(torch.from_numpy(codes))
        size, items = np.unique(sizes.numpy(), return_counts=True)
        section.update(
            codebook=codebook,
            usage=health["usage"], perplexity=health["perplexity"], nmi=health.get("nmi"),
            collision_rate=health["collision_rate"], largest_group=health["largest_collision_group"],
            code_counts=[np.sort(np.bincount(codes[:, level], minlength=codebook))[::-1].tolist()
                         for level in range(codes.shape[1])],
            groups={"size": size.tolist(), "groups": (items // size).tolist()},
            prefix_tree=_prefix_tree(codes, tagging.first_level() if levels is not None else None),
        )
    return section


def _prefix_tree(codes: np.ndarray, first_tags: list[str] | None) -> dict:
    """The first two levels of the semantic-ID tree, each node with the most common first-level tag
    of its items (the colour: a readable ID keeps one tag under one prefix)."""
    paths = [[str(c) for c in codes[:, 0]], [f"{a}{SEPARATOR}{b}" for a, b in codes[:, :2]]] if codes.shape[1] > 1 \
        else [[str(c) for c in codes[:, 0]]]
    tree = _tree(paths)
    tree["labels"] = [node.replace(SEPARATOR, "-") for node in tree["ids"]]
    if first_tags is not None:
        frame = pl.DataFrame({"node": paths[-1], "top": paths[0], "tag": first_tags})
        majority = {}
        for column in ("top", "node"):
            counted = frame.group_by(column, "tag").len().sort("len", descending=True).unique(column, keep="first")
            majority.update(zip(counted[column].to_list(), counted["tag"].to_list()))
        tree["tag"] = [majority.get(node, NO_TAG) for node in tree["ids"]]
    return tree


def retriever_section(ws) -> dict | None:
    """The retriever's training and validation curves, and SASRec's beside them where it was trained."""
    metrics = read_json(ws.path(RETRIEVER) / "metrics.json")
    sasrec = read_json(ws.path(SASREC) / "metrics.json")
    if metrics is None and sasrec is None:
        return None
    shown = [("retriever", metrics), ("sasrec", sasrec)]
    if metrics is not None and "member_histories" in metrics:  # an ensemble: its totals, then each member's curves
        n = len(metrics["member_histories"])
        shown[1:1] = [(f"retriever {i + 1}/{n}", {**figures, "history": history}) for i, (figures, history)
                      in enumerate(zip(metrics["member_figures"], metrics["member_histories"]))]
    models = {}
    for name, found in shown:
        if found is not None:
            figures = {k: found.get(k) for k in ("arch", "params", "steps", "best_step", "seconds",
                                                   "tokens_per_s", "targets_per_s", "stopped_early")}
            models[name] = {"figures": {k: v for k, v in figures.items() if v is not None},
                            "curves": _curves(found.get("history", []))}
    return {"models": models}


def evaluation_section(ws) -> dict | None:
    """eval/metrics.json as rows: the retriever, then every baseline, with the ratio to the best one."""
    result = read_json(ws.path(EVAL_METRICS))
    if result is None:
        return None
    from semrec.evaluate import compare

    baselines = result.get("baselines", {})
    best = result.get("vs_best_baseline") or compare(result["metrics"], baselines)
    rows = {result.get("model", {}).get("name", "retriever"): result["metrics"], **baselines}
    return {"split": result.get("split"), "users": result.get("users"), "metrics": list(result["metrics"]),
            "rows": rows, "vs_best_baseline": best, "seconds": result.get("seconds"),
            "by_history_length": result.get("by_history_length")}


def users_section(ws, items: pl.DataFrame, interactions: pl.DataFrame, tagging: Tagging | None, seed: int) -> dict | None:
    """A few users' latest items beside what `semrec recommend --user` answers for them."""
    if not (ws.path(RETRIEVER) / "model.safetensors").is_file():
        return None
    from semrec.errors import SemrecError
    from semrec.recommend import Recommender

    try:
        recommender = Recommender.load(ws)
    except SemrecError as e:
        return {"error": e.message, "users": []}
    keys = items["item_key"].cast(pl.Utf8).to_list()
    titles = items["title"].fill_null("").to_list()
    index = {key: i for i, key in enumerate(keys)}
    tags = (lambda i: [tag_label(level[i]) for level in tagging.levels]) if tagging is not None else (lambda i: [])
    users = interactions.group_by("user_key").len().filter(pl.col("len") >= 3).sort("user_key")["user_key"]
    chosen = [users[int(i)] for i in _sample(users.len(), USERS_SHOWN, seed)]
    shown = []
    for user_key in chosen:
        answer = recommender.for_user(str(user_key), k=RECOMMENDED)
        history = interactions.filter(pl.col("user_key") == user_key).sort("position")["item"].to_list()
        shown.append({
            "user": str(user_key),
            "length": len(history),
            "history": [{"title": titles[i], "tags": tags(i)} for i in history[-HISTORY_SHOWN:]],
            "recommended": [{"title": row["title"], "score": row["score"], "semantic_id": row["semantic_id"],
                             "tags": tags(index[row["item_key"]]) if row["item_key"] in index else row["tags"]}
                            for row in answer["items"]],
        })
    return {"users": shown}


def read_tables(ws) -> tuple[pl.DataFrame, pl.DataFrame]:
    items = pl.read_parquet(ws.path(ITEMS)).sort("item")
    interactions = pl.read_parquet(ws.path(INTERACTIONS), columns=["user", "user_key", "item", "position"])
    return items, interactions
