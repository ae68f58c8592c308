"""The stages of the pipeline: what each runs, which settings it reads, what it writes, what it needs.

Stage functions are named as "module:function" so that importing this table (and `--help`)
stays fast; each is called as `function(workspace, stage_run) -> figures` and writes its outputs
atomically. A settings key that starts with "-" is left out of the stage's fingerprint.
"""

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    run: str
    settings: tuple[str, ...]
    outputs: tuple[str, ...]
    upstream: Callable[[object], tuple[str, ...]]


def _needs(*names: str):
    return lambda settings: names


def _tokenizer_upstream(settings) -> tuple[str, ...]:
    return ("embed", "tag") if settings.tokenizer.kind == "hidvae" else ("embed",)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage(
            "download",
            "semrec.data.prepare:run_download",
            ("data", "project.seed", "-data.max_seq_len", "-data.offline"),
            ("data/items.parquet", "data/interactions.parquet", "data/splits.parquet"),
            _needs(),
        ),
        Stage(
            "embed",
            "semrec.embed:run_embed",
            ("embed", "-embed.batch_size", "-embed.device"),
            ("embeddings.safetensors",),
            _needs("download"),
        ),
        Stage(
            "tag",
            "semrec.tags.stage:run_tag",
            ("tag", "-tag.llm.concurrency", "-tag.llm.timeout_s", "-tag.llm.max_retries", "-tag.llm.retry_wait_s"),
            ("tags.parquet",),
            _needs("download", "embed"),
        ),
        Stage(
            "fit-tokenizer",
            "semrec.tokenizer.fit:run_fit_tokenizer",
            ("tokenizer", "project.seed", "-tokenizer.device", "-tokenizer.checkpoint_every"),
            ("tokenizer",),
            _tokenizer_upstream,
        ),
        Stage(
            "tokenize",
            "semrec.tokenizer.ids:run_tokenize",
            (),
            ("semantic_ids.parquet",),
            _needs("fit-tokenizer"),
        ),
        Stage(
            "fit-retriever",
            "semrec.retriever.fit:run_fit_retriever",
            (
                "retriever", "data.max_seq_len", "project.seed",
                "-retriever.device", "-retriever.checkpoint_every", "-retriever.compile",
            ),
            ("retriever",),
            _needs("tokenize", "download"),
        ),
        Stage(
            "eval",
            "semrec.evaluate:run_eval",
            ("eval", "retriever.beam_size", "-eval.batch_size"),
            ("eval/metrics.json",),
            _needs("fit-retriever"),
        ),
    ]
}
