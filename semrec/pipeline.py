"""The stages of the pipeline: what each runs, which settings it reads, what it writes, what it needs.

Stage functions are named as "module:function" so that importing this table (and `--help`)
stays fast; each is called as `function(workspace, stage_run) -> figures` and writes its outputs
atomically. A stage's settings are the keys it reads (dotted paths into the settings; a section
means all of it); a key that starts with "-" is left out (where it runs, how often it saves).
Only what a stage really reads is in its fingerprint: the tokenizer reads the sub-tables of its
own kind, and decoding settings live in [eval], so changing how you decode never retrains.

A stage may also *show* artifacts without needing them (`shows`): it reads them when they exist,
never runs the stages that make them, and its fingerprint covers their content, present or absent.
The report is such a stage: it draws what the user has, and the pictures follow what is on disk.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from semrec.artifacts import EMBEDDINGS, EVAL_METRICS, REPORT, RETRIEVER, SASREC, SEMANTIC_IDS, TAGS, TOKENIZER
from semrec.registry import TOKENIZERS

_HOW_LONG = ("train.checkpoint_every", "train.max_minutes")
"""Training keys that change how often a stage saves and how long it may run, not what it learns."""


@dataclass(frozen=True)
class Stage:
    name: str
    run: str
    settings: Callable[[object], tuple[str, ...]]
    outputs: tuple[str, ...]
    upstream: Callable[[object], tuple[str, ...]]
    shows: tuple[str, ...] = ()  # artifacts read where they exist, whose stages it never runs


def _fixed(*names: str):
    return lambda settings: names


def _left_out_while_off(settings, *keys: str) -> tuple[str, ...]:
    """Keys added after stages had been fitted: out of the fingerprint while off, so that those stay up to date."""
    return tuple(f"-{key}" for key in keys if not lookup(settings, key))


def _tokenizer_settings(settings) -> tuple[str, ...]:
    kind = TOKENIZERS[settings.tokenizer.kind]
    keys = ["tokenizer.kind", "tokenizer.levels", "tokenizer.codebook_size", "tokenizer.kmeans_iters", "project.seed"]
    keys += [f"tokenizer.{table}" for table in kind.reads]
    if settings.tokenizer.collaborative_weight:  # added after tokenizers had been fitted: absent while off
        keys.append("tokenizer.collaborative_weight")
    return (*keys, *(f"-tokenizer.{key}" for key in _HOW_LONG),
            *_left_out_while_off(settings, "tokenizer.train.ema_decay"))


def _tokenizer_upstream(settings) -> tuple[str, ...]:
    collaborative = ("fit-baseline",) if settings.tokenizer.collaborative_weight else ()
    return ("embed", *TOKENIZERS[settings.tokenizer.kind].needs, *collaborative)


def _retriever_settings(settings) -> tuple[str, ...]:
    return ("retriever", "project.seed", "-retriever.device", "-retriever.compile",
            *(f"-retriever.{key}" for key in _HOW_LONG),
            *_left_out_while_off(settings, "retriever.item_embeddings", "retriever.tie_head",
                                 "retriever.trie_softmax", "retriever.train.ema_decay", "retriever.distill_weight"),
            *(("-retriever.ensemble",) if settings.retriever.ensemble == 1 else ()))  # added later too; 1 = none


def _retriever_upstream(settings) -> tuple[str, ...]:
    return ("tokenize", "download", *(("fit-baseline",) if settings.retriever.distill_weight else ()))


def _baseline_settings(settings) -> tuple[str, ...]:
    return ("baselines.sasrec", "project.seed", "-baselines.sasrec.device",
            *(f"-baselines.sasrec.{key}" for key in _HOW_LONG),
            *_left_out_while_off(settings, "baselines.sasrec.train.ema_decay"))


def _eval_upstream(settings) -> tuple[str, ...]:
    return ("fit-retriever", "fit-baseline") if "sasrec" in settings.eval.baselines else ("fit-retriever",)


def lookup(settings, key: str):
    for part in key.split("."):
        settings = getattr(settings, part)
    return settings


def select_settings(settings, keys: tuple[str, ...]) -> dict:
    """The settings named by `keys` as a JSON-able dict: {key: value or table}, "-" keys removed."""
    chosen = {}
    for key in keys:
        if not key.startswith("-"):
            value = lookup(settings, key)
            chosen[key] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    for key in keys:
        if key.startswith("-"):
            path = key[1:]
            owner = max((k for k in chosen if path.startswith(k + ".")), key=len, default=None)
            if owner is None:
                continue
            table = chosen[owner]
            *inner, last = path[len(owner) + 1:].split(".")
            for part in inner:
                table = table.get(part, {})
            table.pop(last, None)
    return chosen


def stage_settings(settings, name: str) -> dict:
    """What stage `name` reads of `settings`: its fingerprint's settings part, also stored with what it fits."""
    return select_settings(settings, STAGES[name].settings(settings))


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage(
            "download",
            "semrec.data.prepare:run_download",
            _fixed("data", "project.seed", "-data.offline"),
            ("data/items.parquet", "data/interactions.parquet", "data/splits.parquet"),
            _fixed(),
        ),
        Stage(
            "embed",
            "semrec.embed:run_embed",
            _fixed("embed", "-embed.batch_size", "-embed.device", "-embed.devices"),
            ("embeddings.safetensors",),
            _fixed("download"),
        ),
        Stage(
            "tag",
            "semrec.tags.stage:run_tag",
            _fixed("tag", "project.seed", "-tag.llm.concurrency", "-tag.llm.timeout_s", "-tag.llm.max_retries", "-tag.llm.retry_wait_s"),
            ("tags.parquet",),
            _fixed("download", "embed"),
        ),
        Stage(
            "fit-tokenizer",
            "semrec.tokenizer.fit:run_fit_tokenizer",
            _tokenizer_settings,
            ("tokenizer",),
            _tokenizer_upstream,
        ),
        Stage(
            "tokenize",
            "semrec.tokenizer.ids:run_tokenize",
            _fixed(),
            ("semantic_ids.parquet",),
            _fixed("fit-tokenizer"),
        ),
        Stage(
            "fit-retriever",
            "semrec.retriever.fit:run_fit_retriever",
            _retriever_settings,
            ("retriever",),
            _retriever_upstream,
        ),
        Stage(
            "fit-baseline",
            "semrec.baselines.fit:run_fit_baseline",
            _baseline_settings,
            ("baselines/sasrec",),
            _fixed("download"),
        ),
        Stage(
            "eval",
            "semrec.evaluate:run_eval",
            _fixed("eval", "-eval.batch_size"),
            ("eval/metrics.json",),
            _eval_upstream,
        ),
        Stage(
            "report",
            "semrec.html_report.stage:run_report",
            _fixed("project.seed", "eval.beam_size", "tag.levels", "tag.drop_root"),
            (REPORT,),
            _fixed("download"),
            shows=(EMBEDDINGS, TAGS, TOKENIZER, SEMANTIC_IDS, RETRIEVER, SASREC, EVAL_METRICS),
        ),
    ]
}
