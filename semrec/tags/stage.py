"""The `tag` stage: every item gets a path of `tag.levels` tags, from metadata, an LLM, or clustering.

tag.source = metadata: category paths; levels a path lacks get fillers ("Makeup (general)").
tag.source = llm: every item is asked (the metadata only supplies candidate tags).
tag.source = auto: metadata where present; the LLM for the items whose path is too short when an
  endpoint is configured; otherwise (and for items the LLM failed on) the clustering fallback.
Rare tags merge into "Other <parent>" (see metadata.py) before the gaps are filled.
"""

import difflib
import os
import random
from collections.abc import Callable
from functools import partial
from pathlib import Path

import polars as pl

from semrec.errors import SemrecError, StageFailed
from semrec.tags import SEPARATOR, SOURCES, join_path, source_columns, tag_columns, tag_label, tree_violations
from semrec.tags.metadata import Grid, category_levels, fill_gaps, merge_rare
from semrec.tags.table import read_item_tags
from semrec.artifacts import ITEMS, TAGS
from semrec.io import write_parquet
from semrec.report import Reporter
from semrec.settings import LLMSettings, Settings, TagSettings

LLM_CACHE = "tags_cache/llm.jsonl"


def _read_items(path: Path) -> pl.DataFrame:
    if not path.exists():
        raise SemrecError(f"no items table at {path}", "run `semrec download`")
    return pl.read_parquet(path)


def _metadata_grid(items: pl.DataFrame, settings: TagSettings) -> tuple[Grid, Grid, str | None]:
    paths = items["category_path"].to_list() if "category_path" in items.columns else [None] * items.height
    names, root = category_levels(paths, settings.levels, settings.drop_root)
    sources = [["metadata" if n is not None else None for n in row] for row in names]
    return names, sources, root


def _llm_wanted(settings: TagSettings) -> bool:
    return settings.source == "llm" or (settings.source == "auto" and bool(settings.llm.base_url))


def _llm_jobs(items: pl.DataFrame, names: Grid, settings: Settings):
    """The items to ask, in the fixed seeded order that makes prompts (and the cache) reproducible."""
    from semrec.embed import item_texts
    from semrec.tags.llm import LLMJob

    texts = item_texts(items, settings.embed.template)
    keys = items["item_key"].cast(pl.Utf8).to_list()
    levels = settings.tag.levels
    if settings.tag.source == "llm":
        jobs = [LLMJob(i, keys[i], texts[i], [None] * levels) for i in range(items.height)]
    else:
        jobs = [LLMJob(i, keys[i], texts[i], list(row)) for i, row in enumerate(names) if None in row]
    random.Random(settings.project.seed).shuffle(jobs)
    return jobs


def _vocabulary(names: Grid, levels: int, min_count: int) -> list[set[str]]:
    """Per level, the metadata tags seen at least `min_count` times: the first candidates offered."""
    counts: list[dict[str, int]] = [{} for _ in range(levels)]
    for row in names:
        for level, tag in enumerate(join_path([n for n in row if n is not None])):
            counts[level][tag] = counts[level].get(tag, 0) + 1
    return [{t for t, c in level.items() if c >= min_count} for level in counts]


def _ask_llm(
    items: pl.DataFrame, names: Grid, *, settings: Settings, cache_path: Path, reporter: Reporter,
    load_vectors: Callable[[], tuple], limit: int | None = None, dry_run: bool = False,
):
    """Ask the LLM about the items whose `names` (the metadata grid) lack a level; `load_vectors()`
    gives the item embeddings, needed only when the prompts offer candidate tags."""
    from semrec.embed import CachedEncoder
    from semrec.tags.llm import AnswerCache, ChatClient, tag_with_llm

    tag = settings.tag
    jobs = _llm_jobs(items, names, settings)[:limit]
    client = None if dry_run else ChatClient(tag.llm, reporter=reporter)
    vectors, encoder = None, None
    if tag.llm.candidates > 0:
        vectors, _ = load_vectors()
        encoder = CachedEncoder(settings.embed, reporter)
    try:
        return tag_with_llm(
            jobs, settings=tag.llm, levels=tag.levels, cache=AnswerCache(cache_path),
            vocabulary=_vocabulary(names, tag.levels, tag.min_count), item_vectors=vectors,
            encode=encoder.encode if encoder else None, reporter=reporter, client=client, dry_run=dry_run,
        )
    finally:
        if encoder is not None:
            encoder.save()


def run_tag(ws, run) -> dict:
    from semrec.embed import load_embeddings

    settings = ws.settings.tag
    items = _read_items(ws.path(ITEMS))
    if settings.source == "llm" and not settings.llm.base_url:
        raise SemrecError("tag.source = 'llm' but no endpoint is configured", "set tag.llm.base_url and tag.llm.model, or use tag.source = 'auto'")
    load_vectors = partial(load_embeddings, ws)
    metadata_names, sources, root = _metadata_grid(items, settings)
    figures: dict = {"items": items.height, "levels": settings.levels, "source": settings.source, "root_dropped": root}
    if settings.source == "llm":
        names = [[None] * settings.levels for _ in metadata_names]
        sources = [[None] * settings.levels for _ in metadata_names]
    else:
        names = [list(row) for row in metadata_names]
    if _llm_wanted(settings) and any(None in row for row in names):
        cache_path = ws.path(LLM_CACHE)
        outcome = _ask_llm(
            items, metadata_names, settings=ws.settings, cache_path=cache_path, reporter=ws.reporter, load_vectors=load_vectors,
        )
        _take_llm_answers(outcome.answers, names, sources)
        figures["llm"] = outcome.figures()
        if outcome.failures:
            _check_failure_share(outcome, items, settings.llm)
            ws.reporter.warn(_llm_failure_warning(outcome, items, settings.llm))
    figures["merged_rare"] = merge_rare(names, sources, settings.min_count)
    if settings.source == "metadata":
        figures["fallback_items"] = _fill_with_fillers(names, sources, settings.min_count, ws.reporter)
    else:
        figures["fallback_items"] = _fallback(
            items, names, sources, settings=ws.settings, reporter=ws.reporter, load_vectors=load_vectors,
        )
    frame = _frame(items, names, sources, settings.levels)
    problems = tree_violations(frame, settings.levels)
    if problems:
        raise StageFailed(f"the tags do not form a tree: {'; '.join(problems[:3])}", "this is a bug in semrec: please report it")
    write_parquet(frame, ws.path(TAGS))
    figures.update(_tag_figures(frame, settings.levels))
    ws.reporter.info(
        "distinct tags per level: " + ", ".join(str(n) for n in figures["distinct_tags"])
        + "; metadata coverage per level: " + ", ".join(f"{c:.1%}" for c in figures["coverage"])
    )
    return figures


def _take_llm_answers(answers: dict[int, list[str]], names: Grid, sources: Grid) -> None:
    """Put the LLM's names into the levels that are still open."""
    for item, answer in answers.items():
        for level, name in enumerate(answer):
            if names[item][level] is None:
                names[item][level], sources[item][level] = name, "llm"


def _first_failure(failures: dict, items: pl.DataFrame) -> str:
    """The failure of the item that comes first in the table: its key, what was wrong, and what it answered."""
    from semrec.tags.llm import excerpt

    item = min(failures)
    error = failures[item]
    answer = excerpt(error.answer or "") or "(nothing)"
    return f"{items['item_key'].cast(pl.Utf8)[item]}: {error}; it answered {answer}"


def _check_failure_share(outcome, items: pl.DataFrame, llm: LLMSettings) -> None:
    """Refuse tags that are mostly fallbacks: a model that rarely answers as asked is a failed run, not a warning."""
    share = len(outcome.failures) / outcome.tried
    if share > llm.max_failure_share:
        raise StageFailed(
            f"{len(outcome.failures)} of the {outcome.tried} items asked ({share:.0%}) got no valid answer from {llm.model} "
            f"at {llm.base_url}, more than tag.llm.max_failure_share = {llm.max_failure_share:.0%}; the first was "
            + _first_failure(outcome.failures, items),
            "valid answers are kept and not asked again; try a stronger model or a server that takes a JSON schema "
            "(response_format), or raise tag.llm.max_failure_share to give the rest fallback tags",
        )


def _llm_failure_warning(outcome, items: pl.DataFrame, llm: LLMSettings) -> str:
    return (
        f"{len(outcome.failures)} of the {outcome.tried} items asked got no valid answer from {llm.model} at {llm.base_url} "
        f"(e.g. {_first_failure(outcome.failures, items)}); they get fallback tags. "
        "`semrec tag --force` asks them again (the valid answers come from the cache)"
    )


def _fill_with_fillers(names: Grid, sources: Grid, min_count: int, reporter: Reporter) -> int:
    """tag.source = metadata: the levels still open get filler tags; says how many items that touched."""
    filled = fill_gaps(names, sources)
    if filled:
        example = next(name for row, src in zip(names, sources) for name, s in zip(row, src) if s == "fallback")
        reporter.warn(
            f"{filled} items have no metadata tag at some level (a short or empty category path, or a tag rarer than "
            f"tag.min_count = {min_count}); those levels got filler tags like {example!r}"
        )
    return filled


def _fallback(
    items: pl.DataFrame, names: Grid, sources: Grid, *, settings: Settings, reporter: Reporter, load_vectors: Callable[[], tuple],
) -> int:
    """Fill the levels still unknown by clustering the embeddings, and say how many items that touched."""
    tag = settings.tag
    if not any(None in row for row in names):
        return 0
    from semrec.tags.cluster import fill_by_clustering

    vectors, _ = load_vectors()
    titles = items["title"].to_list() if "title" in items.columns else [None] * items.height
    filled = fill_by_clustering(
        names, sources, vectors, titles,
        branching=tag.fallback_branching, min_size=tag.min_count, seed=settings.project.seed,
    )
    keys = items["item_key"].cast(pl.Utf8).to_list()
    examples = [keys[i] for i, row in enumerate(sources) if "fallback" in row][:5]
    why = "" if tag.llm.base_url else "; no LLM endpoint is configured (set tag.llm.base_url and tag.llm.model to ask one)"
    reporter.warn(
        f"{filled} items got fallback tags (clustering of the embeddings, labelled by title words) at levels that "
        f"neither metadata nor an LLM gave them, or below a tag rarer than tag.min_count = {tag.min_count}"
        f"{why}; e.g. {', '.join(examples)}"
    )
    return filled


def _frame(items: pl.DataFrame, names: Grid, sources: Grid, levels: int) -> pl.DataFrame:
    paths = [join_path(row) for row in names]
    columns = {"item": items["item"].cast(pl.Int64)}
    for level, tag_col in enumerate(tag_columns(levels)):
        columns[tag_col] = pl.Series(tag_col, [p[level] for p in paths], dtype=pl.Utf8)
    for level, src_col in enumerate(source_columns(levels)):
        columns[src_col] = pl.Series(src_col, [s[level] for s in sources], dtype=pl.Utf8)
    return pl.DataFrame(columns)


def _tag_figures(frame: pl.DataFrame, levels: int) -> dict:
    n = max(frame.height, 1)
    per_source = {src: [int((frame[c] == src).sum()) for c in source_columns(levels)] for src in SOURCES}
    return {
        "distinct_tags": [frame[c].n_unique() for c in tag_columns(levels)],
        "coverage": [round(count / n, 4) for count in per_source["metadata"]],
        "sources": per_source,
    }


def _near_keys(key: str, keys: list[str], n: int = 3) -> list[str]:
    """Keys close to `key`: the same key in another case, else difflib's closest, longest shared prefix first."""
    folded = [k for k in keys if k.lower() == key.lower()]
    if folded:
        return folded[:n]
    close = difflib.get_close_matches(key, keys, n=10, cutoff=0.6)
    return sorted(close, key=lambda k: -len(os.path.commonprefix([k, key])))[:n]


def show_item(ws, item_key: str) -> dict:
    """One item's text and tag path; an unknown key is an error that suggests the closest keys."""
    if ws.state("tag").state != "done":
        ws.ensure("tag")
    items = _read_items(ws.path(ITEMS))
    keys = items["item_key"].cast(pl.Utf8).to_list()
    if item_key not in keys:
        close = _near_keys(item_key, keys)
        raise SemrecError(
            f"no item {item_key!r} in {ws.path(ITEMS)}",
            f"did you mean {', '.join(close)}?" if close else "item keys are the source's ids, e.g. " + ", ".join(keys[:3]),
        )
    row = keys.index(item_key)
    tags = read_item_tags(ws.path(TAGS), [row]).get(row)
    if tags is None:
        raise SemrecError(f"{ws.path(TAGS)} has no tags for item {item_key!r}", "run `semrec tag --force` to tag the current catalogue")
    from semrec.embed import item_texts

    text = item_texts(items[row], ws.settings.embed.template)[0]
    return {
        "item": row,
        "item_key": item_key,
        "title": items["title"][row] if "title" in items.columns else None,
        "text": text,
        "tags": [tag_label(t) for t in tags.tags],
        "tag_path": tags.tags[-1],
        "sources": tags.sources,
    }


def tag_sample(ws, limit: int | None, dry_run: bool) -> dict:
    """Ask the LLM about the first `limit` items of the run's order (answers go to the cache, which the
    full run then reuses); tags.parquet is not written. `dry_run` returns the prompts, sending nothing."""
    settings = ws.settings.tag
    if not dry_run and not settings.llm.base_url:
        raise SemrecError(
            "--limit asks the LLM, but no endpoint is configured (tag.llm.base_url is empty)",
            "set tag.llm.base_url and tag.llm.model in semrec.toml, or use --dry-run to see the prompts",
        )
    if settings.source == "metadata":
        raise SemrecError("tag.source = 'metadata' never asks the LLM", "set tag.source = 'auto' or 'llm' to use it")
    limit = 5 if limit is None else limit
    if limit < 1:
        raise SemrecError(f"--limit {limit} must be at least 1")
    ws.ensure("embed")
    from semrec.embed import load_embeddings

    items = _read_items(ws.path(ITEMS))
    names, _, _ = _metadata_grid(items, settings)
    outcome = _ask_llm(
        items, names, settings=ws.settings, cache_path=ws.path(LLM_CACHE), reporter=ws.reporter,
        load_vectors=partial(load_embeddings, ws), limit=limit, dry_run=dry_run,
    )
    if outcome.failures:
        _check_failure_share(outcome, items, settings.llm)
    keys = items["item_key"].cast(pl.Utf8).to_list()
    result = {"items": len(outcome.answers) + len(outcome.failures) + len(outcome.prompts), **outcome.figures()}
    if dry_run:
        result["prompts"] = {p["item_key"]: p["messages"][-1]["content"] for p in outcome.prompts}
        if outcome.prompts:
            result["system_prompt"] = outcome.prompts[0]["messages"][0]["content"]
    result["tags"] = {keys[i]: SEPARATOR.join(path) for i, path in outcome.answers.items()}
    result["failures"] = {keys[i]: str(error) for i, error in outcome.failures.items()}
    if result["items"] == 0:
        result["note"] = "every item has a tag at every level from its metadata: there is nothing to ask"
    return result
