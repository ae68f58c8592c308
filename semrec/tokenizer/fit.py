"""The `fit-tokenizer` stage: fit the tokenizer kind of tokenizer.kind on the item embeddings; save and load it.

The kinds (rqvae, hidvae, rqkmeans, and any registered later) live in `semrec.registry.TOKENIZERS`
and implement `semrec.tokenizer.base.TokenizerKind`; this module holds what they share: the
checks of the inputs, config.json, metrics.json, and the check that a fitted tokenizer matches
the project's settings.

`tokenizer/` holds the kind's fitted state (`model.safetensors`), `config.json` (kind, sizes, the
embedding model, the settings it read, the model config) and `metrics.json` (reconstruction
error, per-level usage and perplexity, collision rate, the kind's extra metrics, fit time).
A tokenizer is rebuilt from `config.json` alone, then its weights are checked against it.
"""

import json
import time

import torch

from semrec import distributed
from semrec.artifacts import TAGS, TOKENIZER
from semrec.errors import SemrecError
from semrec.io import atomic_write_json
from semrec.pipeline import stage_settings
from semrec.registry import TOKENIZERS
from semrec.settings import Settings
from semrec.tags.table import read_tags
from semrec.tokenizer.base import FitInputs, TokenizerKind
from semrec.tokenizer.health import tokenizer_health

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"


def tokenizer_kind(kind: str, where: str) -> type[TokenizerKind]:
    """The class of tokenizer kind `kind` (named in `where`), from the registry."""
    entry = TOKENIZERS.get(kind)
    if entry is None:
        raise SemrecError(
            f"unknown tokenizer kind {kind!r} in {where}",
            f"the known kinds are {', '.join(TOKENIZERS)}; a kind of a plugin must be registered before it is used",
        )
    try:
        return entry.load()
    except (ImportError, AttributeError) as e:
        raise SemrecError(f"tokenizer kind {kind!r} cannot be loaded from {entry.target}: {e}", "check its module") from e


# -- inputs -------------------------------------------------------------------------------------
def load_tags(ws, n_items: int) -> list[list[str]] | None:
    """tags.parquet as one list of N tag strings per level (row i = item i), or None if absent."""
    return read_tags(ws.path(TAGS), n_items)


def _check_inputs(ws, embeddings: torch.Tensor, tags) -> None:
    settings = ws.settings.tokenizer
    n = embeddings.shape[0]
    if settings.codebook_size > n:
        raise SemrecError(
            f"tokenizer.codebook_size = {settings.codebook_size} is larger than the number of items ({n})",
            f"set tokenizer.codebook_size to at most {n} in {ws.project.path} (a few times smaller works best)",
        )
    if not torch.isfinite(embeddings).all():
        raise SemrecError(
            f"{ws.path('embeddings.safetensors')} contains NaN or infinite values",
            "run `semrec embed --force` to embed the items again",
        )
    if "tag" in TOKENIZERS[settings.kind].needs:
        _check_tags(ws, tags)


def _check_tags(ws, tags: list[list[str]] | None) -> None:
    """A kind that learns from tags refuses tags that are one and the same on every item at every level
    (custom data without categories, tag.source = "metadata": all "Uncategorized"): they teach nothing."""
    kind = ws.settings.tokenizer.kind
    if tags is None:
        raise SemrecError(
            f"tokenizer.kind = \"{kind}\" needs item tags, but {ws.path(TAGS)} does not exist",
            "run `semrec tag` first (or `semrec fit-tokenizer`, which runs it as an upstream stage)",
        )
    if any(len(set(level)) > 1 for level in tags):
        return
    categories = (
        "set data.custom.category_column to a column of category paths"
        if ws.settings.data.dataset == "custom"
        else "use data with category paths"
    )
    raise SemrecError(
        f"tokenizer.kind = \"{kind}\" learns from item tags, but every item in {ws.path(TAGS)} has the same tag at "
        f"every level ({tags[0][0]!r} at level 1, tag.source = \"{ws.settings.tag.source}\"): they carry nothing to learn",
        f"{categories}, or let an LLM write tags (tag.source = \"llm\" with tag.llm.base_url and tag.llm.model), "
        "or use tokenizer.kind = \"rqvae\", which needs no tags",
    )


# -- fitting ------------------------------------------------------------------------------------
def fit_tokenizer(
    settings: Settings, embeddings: torch.Tensor, tags: list[list[str]] | None, checkpoint_dir, fingerprint: str,
    reporter=None, resume: bool = True, encode_tag_texts=None,
) -> tuple[TokenizerKind, dict]:
    """Fit the tokenizer of `settings.tokenizer.kind`; return it and the training summary.

    `encode_tag_texts(texts) -> (n, text_dim)` embeds tag texts (for kinds that embed their tags).
    """
    from semrec.device import resolve_device

    tok = settings.tokenizer
    distributed.check_batch_size(tok.train.batch_size, "tokenizer.train.batch_size")
    config = {
        "kind": tok.kind,
        "levels": tok.levels,
        "codebook_size": tok.codebook_size,
        "embedding_dim": int(embeddings.shape[1]),
        "settings": stage_settings(settings, "fit-tokenizer"),
        "seed": settings.project.seed,
    }
    inputs = FitInputs(
        settings, config, embeddings, resolve_device(tok.device), tags, checkpoint_dir, fingerprint, reporter, resume,
        encode_tag_texts,
    )
    return tokenizer_kind(tok.kind, "tokenizer.kind").fit(inputs)


def tokenizer_metrics(tokenizer: TokenizerKind, embeddings: torch.Tensor, tags: list[list[str]] | None) -> dict:
    """metrics.json: health of the codes over every item, reconstruction error, the kind's extra metrics."""
    codes, _, errors = tokenizer.assign(embeddings)
    health = tokenizer_health(codes, tokenizer.config["codebook_size"], tags)
    metrics = {"reconstruction_error": float(errors.mean()), **health}
    extra_metrics = getattr(tokenizer, "extra_metrics", None)
    if extra_metrics is not None:
        metrics.update(extra_metrics(embeddings, tags))
    return metrics


# -- saving and loading -------------------------------------------------------------------------
def save_tokenizer(tokenizer: TokenizerKind, folder) -> None:
    """The kind's fitted state, then config.json (last: a folder with a config.json is complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(folder)
    atomic_write_json(folder / CONFIG_FILE, tokenizer.config)


def read_tokenizer(folder, device: torch.device | str = "cpu") -> TokenizerKind:
    """Rebuild a tokenizer from `folder/config.json` through its kind's `load`."""
    config_path = folder / CONFIG_FILE
    if not config_path.exists():
        raise SemrecError(f"no fitted tokenizer in {folder}", "run `semrec fit-tokenizer`")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, OSError) as e:
        raise SemrecError(f"the tokenizer in {folder} is unreadable: {e}", "run `semrec fit-tokenizer --force`") from e
    return tokenizer_kind(config.get("kind"), str(config_path)).load(folder, config, device)


def load_tokenizer(ws) -> TokenizerKind:
    """The workspace's fitted tokenizer, after checking that it was fitted under the project's settings."""
    from semrec.device import resolve_device

    tokenizer = read_tokenizer(ws.path(TOKENIZER), resolve_device(ws.settings.tokenizer.device))
    fitted, current = tokenizer.config["settings"], stage_settings(ws.settings, "fit-tokenizer")
    for key in sorted(current.keys() | fitted.keys()):  # a key only one side has: a setting on in one, off in the other
        if fitted.get(key) != current.get(key):
            raise SemrecError(
                f"{ws.path(TOKENIZER)} was fitted with {key} = {fitted.get(key, 'off')!r}, "
                f"but {ws.project.path} says {current.get(key, 'off')!r}",
                "run `semrec fit-tokenizer` to fit it under the current settings (or restore the setting)",
            )
    if tokenizer.config.get("embedding_model") not in (None, ws.settings.embed.model):
        raise SemrecError(
            f"{ws.path(TOKENIZER)} was fitted on embeddings of {tokenizer.config['embedding_model']!r}, "
            f"but embed.model is {ws.settings.embed.model!r}",
            "run `semrec fit-tokenizer` to fit it on the current embeddings",
        )
    return tokenizer


# -- the stage ----------------------------------------------------------------------------------
def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def run_fit_tokenizer(ws, run) -> dict:
    from semrec.embed import CachedEncoder
    from semrec.tokenizer.inputs import tokenizer_inputs

    embeddings, metadata = tokenizer_inputs(ws)
    tags = load_tags(ws, embeddings.shape[0])
    _check_inputs(ws, embeddings, tags)
    folder = ws.path(TOKENIZER)
    resume = bool(run.options.get("resume", True)) and not run.fresh

    def encode_tag_texts(texts: list[str]) -> torch.Tensor:
        encoder = CachedEncoder(ws.settings.embed, ws.reporter)
        vectors = encoder.encode(texts)
        if distributed.is_main():
            encoder.save()
        return vectors

    started = time.perf_counter()
    tokenizer, summary = fit_tokenizer(
        ws.settings, embeddings, tags, folder / "checkpoints", run.fingerprint, ws.reporter, resume, encode_tag_texts
    )
    fit_seconds = time.perf_counter() - started
    if not distributed.is_main():  # rank 0 measures and writes
        return {}
    tokenizer.config["embedding_model"] = metadata.get("model", ws.settings.embed.model)
    metrics = tokenizer_metrics(tokenizer, embeddings, tags)
    metrics.update(kind=tokenizer.config["kind"], steps=summary["steps"], fit_seconds=fit_seconds)
    if summary.get("history"):
        metrics["history"] = summary["history"]
    save_tokenizer(tokenizer, folder)
    atomic_write_json(folder / METRICS_FILE, metrics)
    figures = {k: v for k, v in metrics.items() if k not in ("history", "items")}
    return _rounded(figures)
