"""The `fit-tokenizer` stage: fit rqvae / hidvae / rqkmeans on the item embeddings; save and load it.

`tokenizer/` holds `model.safetensors` (the weights, or the k-means codebooks), `config.json`
(kind, sizes, the embedding model, every tokenizer setting, the model config) and `metrics.json`
(reconstruction error, per-level usage and perplexity, collision rate, tag accuracy, fit time).
A tokenizer is rebuilt from `config.json` alone, then its weights are checked against it.
"""

import dataclasses
import json
import time
from dataclasses import dataclass, field

import torch

from semrec.errors import SemrecError
from semrec.pipeline import stage_settings
from semrec.settings import Settings, TokenizerSettings
from semrec.tags.table import read_tags
from semrec.tokenizer.health import tokenizer_health
from semrec.tokenizer.hidvae import HiDVAE, HiDVAEConfig, tag_text, tag_vocabulary
from semrec.tokenizer.kmeans import assign_residual, residual_kmeans
from semrec.tokenizer.rqvae import RQVAE, RQVAEConfig
from semrec.artifacts import TAGS, TOKENIZER
from semrec.io import atomic_path, atomic_write_json

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
INIT_SAMPLE = 16384  # items the codebooks are k-means initialised on (all of them below this)


@dataclass
class Tokenizer:
    """A fitted tokenizer: a trained RQ-VAE / HiD-VAE (`model`) or residual k-means `codebooks`."""

    config: dict
    model: RQVAE | None = None
    codebooks: list[torch.Tensor] = field(default_factory=list)

    @property
    def levels(self) -> int:
        return self.config["levels"]

    @property
    def codebook_size(self) -> int:
        return self.config["codebook_size"]

    @torch.no_grad()
    def assign(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Codes (N, L) long, distance of each item's latent to its quantised vector (N,), and
        the reconstruction error |x - x̂|² (N,); all on the CPU."""
        if embeddings.shape[1] != self.config["embedding_dim"]:
            raise SemrecError(
                f"the embeddings have {embeddings.shape[1]} dimensions but the tokenizer was fitted on "
                f"{self.config['embedding_dim']}",
                "run `semrec fit-tokenizer` again after changing the embedding model",
            )
        if self.model is not None:
            device = next(self.model.parameters()).device
            codes, gaps, errors = self.model.assign(embeddings.to(device))
        else:
            x = embeddings.to(self.codebooks[0].device).float()
            codes, reconstruction = assign_residual(x, self.codebooks)
            gaps = (x - reconstruction).norm(dim=-1)
            errors = gaps.pow(2)
        return codes.cpu(), gaps.float().cpu(), errors.float().cpu()

    def to(self, device: torch.device) -> "Tokenizer":
        if self.model is not None:
            self.model.to(device)
        self.codebooks = [c.to(device) for c in self.codebooks]
        return self


# -- configuration ------------------------------------------------------------------------------
def model_config(settings: TokenizerSettings, input_dim: int, seed: int) -> RQVAEConfig:
    """The RQ-VAE part of the model config, from the project's tokenizer settings."""
    vae = settings.rqvae
    return RQVAEConfig(
        input_dim=input_dim,
        hidden_dims=list(vae.hidden_dims),
        latent_dim=vae.latent_dim,
        levels=settings.levels,
        codebook_size=settings.codebook_size,
        distance=vae.distance,
        grad_mode=vae.grad_mode,
        beta=vae.beta,
        gumbel_temperature=list(vae.gumbel_temperature),
        anneal_steps=settings.train.steps,
        kmeans_iters=settings.kmeans_iters,
        dead_after=vae.dead_code_steps if vae.revive_dead_codes else 0,
        seed=seed,
    )


def hidvae_config(settings: TokenizerSettings, base: RQVAEConfig, tag_classes: list[int], text_dim: int) -> HiDVAEConfig:
    return HiDVAEConfig(
        **dataclasses.asdict(base),
        tag_classes=tag_classes,
        text_dim=text_dim,
        tag_weight=settings.hidvae.tag_weight,
        focal_gamma=settings.hidvae.focal_gamma,
        align_weight=settings.hidvae.align_weight,
        align_temperature=settings.hidvae.align_temperature,
        unique_weight=settings.hidvae.unique_weight,
        unique_margin=settings.hidvae.unique_margin,
    )


def build_model(config: dict) -> RQVAE:
    """The untrained model of a `config.json`'s "model" entry (the kind decides the class)."""
    if config["kind"] == "hidvae":
        return HiDVAE(HiDVAEConfig(**config["model"]))
    return RQVAE(RQVAEConfig(**config["model"]))


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
    if settings.kind == "hidvae" and tags is None:
        raise SemrecError(
            f"tokenizer.kind = \"hidvae\" needs item tags, but {ws.path(TAGS)} does not exist",
            "run `semrec tag` first (or `semrec fit-tokenizer`, which runs it as an upstream stage)",
        )


# -- fitting ------------------------------------------------------------------------------------
class TokenizerTask:
    """The training task of `semrec.train.train`: batches of item embeddings (and their tag ids)."""

    def __init__(self, model: RQVAE, embeddings: torch.Tensor, tags: torch.Tensor | None, batch_size: int, seed: int):
        self.model, self.embeddings, self.tags = model, embeddings, tags
        self.batch_size, self.seed = batch_size, seed

    def batch(self, step: int) -> torch.Tensor:
        from semrec.train import epoch_indices

        return epoch_indices(self.embeddings.shape[0], self.batch_size, step, self.seed).to(self.embeddings.device)

    def loss(self, index: torch.Tensor) -> tuple[torch.Tensor, dict]:
        x = self.embeddings[index]
        if self.tags is None:
            out = self.model(x)
            return out.loss, {"recon": out.reconstruction_loss.detach(), "vq": out.quantize_loss.detach()}
        out = self.model(x, self.tags[index])
        return out.loss, {
            "recon": out.reconstruction_loss.detach(),
            "vq": out.quantize_loss.detach(),
            "tag": out.tag_loss.detach(),
            "align": out.align_loss.detach(),
            "unique": out.unique_loss.detach(),
        }


def fit_tokenizer(
    settings: Settings, embeddings: torch.Tensor, tags: list[list[str]] | None, checkpoint_dir, fingerprint: str,
    reporter=None, resume: bool = True, encode_tag_texts=None,
) -> tuple[Tokenizer, dict]:
    """Fit the tokenizer of `settings.tokenizer.kind`; return it and the training summary.

    `encode_tag_texts(texts) -> (n, text_dim)` embeds tag texts (hidvae only).
    """
    from semrec.device import resolve_device
    from semrec.train import TrainConfig, train

    tok, seed = settings.tokenizer, settings.project.seed
    device = resolve_device(tok.device)
    config = {
        "kind": tok.kind,
        "levels": tok.levels,
        "codebook_size": tok.codebook_size,
        "embedding_dim": int(embeddings.shape[1]),
        "settings": stage_settings(settings, "fit-tokenizer"),
        "seed": seed,
    }
    if tok.kind == "rqkmeans":
        result = residual_kmeans(
            embeddings.to(device), levels=tok.levels, k=tok.codebook_size, iters=tok.kmeans_iters, seed=seed,
            balanced=tok.rqkmeans.balanced,
        )
        return Tokenizer(config, codebooks=result.codebooks), {"steps": 0}

    torch.manual_seed(seed)
    base = model_config(tok, int(embeddings.shape[1]), seed)
    tag_ids = None
    if tok.kind == "hidvae":
        supervised = tags[: tok.levels]
        tag_ids, names = tag_vocabulary(supervised, tok.hidvae.tag_min_count)
        texts = encode_tag_texts([tag_text(n) for level in names for n in level])
        config["tag_names"] = names
        sizes = [len(level) for level in names]
        model_cfg = hidvae_config(tok, base, sizes, int(texts.shape[1]))
        model = HiDVAE(model_cfg)
        model.set_tag_texts(list(torch.split(texts.float(), sizes)))  # one (n_l, text_dim) block per level
        tag_ids = tag_ids.to(device)
    else:
        model_cfg = base
        model = RQVAE(model_cfg)
    config["model"] = dataclasses.asdict(model_cfg)
    model.to(device)
    x = embeddings.to(device).float()
    sample = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:INIT_SAMPLE]
    model.initialize(x[sample.to(device)])
    task = TokenizerTask(model, x, tag_ids, tok.train.batch_size, seed)
    train_config = TrainConfig.from_settings(
        tok.train, seed=seed, device=str(device), description=f"fitting the {tok.kind} tokenizer"
    )
    result = train(task, train_config, checkpoint_dir, fingerprint, reporter, resume=resume)
    model.eval()
    return Tokenizer(config, model=model), {"steps": result.steps, "history": result.history}


def tokenizer_metrics(tokenizer: Tokenizer, embeddings: torch.Tensor, tags: list[list[str]] | None) -> dict:
    """metrics.json: health of the codes over every item, reconstruction error, tag accuracy (hidvae)."""
    codes, _, errors = tokenizer.assign(embeddings)
    health = tokenizer_health(codes, tokenizer.codebook_size, tags)
    metrics = {"reconstruction_error": float(errors.mean()), **health}
    if tokenizer.config["kind"] == "hidvae":
        names = tokenizer.config["tag_names"]
        device = next(tokenizer.model.parameters()).device
        predicted = tokenizer.model.predict_tags(embeddings.to(device).float()).cpu()
        truth, _ = tag_vocabulary(tags[: len(names)], tokenizer.config["settings"]["tokenizer.hidvae"]["tag_min_count"])
        metrics["tag_accuracy"] = [float(a) for a in (predicted == truth).float().mean(0)]
    return metrics


# -- saving and loading -------------------------------------------------------------------------
def save_tokenizer(tokenizer: Tokenizer, folder) -> None:
    from safetensors.torch import save_file

    if tokenizer.model is not None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in tokenizer.model.state_dict().items()}
    else:
        tensors = {f"codebook_{level}": c.cpu().contiguous() for level, c in enumerate(tokenizer.codebooks)}
    with atomic_path(folder / MODEL_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"kind": tokenizer.config["kind"]})
    atomic_write_json(folder / CONFIG_FILE, tokenizer.config)


def read_tokenizer(folder, device: torch.device | str = "cpu") -> Tokenizer:
    """Rebuild a tokenizer from `folder/config.json` and load `folder/model.safetensors` into it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config_path, model_path = folder / CONFIG_FILE, folder / MODEL_FILE
    if not config_path.exists() or not model_path.exists():
        raise SemrecError(f"no fitted tokenizer in {folder}", "run `semrec fit-tokenizer`")
    try:
        config = json.loads(config_path.read_text())
        tensors = load_file(str(model_path))
    except (json.JSONDecodeError, SafetensorError, OSError) as e:
        raise SemrecError(f"the tokenizer in {folder} is unreadable: {e}", "run `semrec fit-tokenizer --force`") from e
    if config["kind"] == "rqkmeans":
        codebooks = [tensors[f"codebook_{level}"] for level in range(config["levels"])]
        return Tokenizer(config, codebooks=codebooks).to(device)
    model = build_model(config)
    expected = model.state_dict()
    problems = [f"{k}: missing" for k in expected if k not in tensors]
    problems += [f"{k}: not in a {config['kind']} model" for k in tensors if k not in expected]
    problems += [
        f"{k}: shape {tuple(tensors[k].shape)} in the file, {tuple(v.shape)} in the config"
        for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape
    ]
    if problems:
        raise SemrecError(
            f"{model_path} does not match {config_path}: " + "; ".join(problems[:5]),
            "run `semrec fit-tokenizer --force` to fit it again",
        )
    model.load_state_dict(tensors)
    model.eval()
    return Tokenizer(config, model=model).to(device)


def load_tokenizer(ws) -> Tokenizer:
    """The workspace's fitted tokenizer, after checking that it was fitted under the project's settings."""
    from semrec.device import resolve_device

    tokenizer = read_tokenizer(ws.path(TOKENIZER), resolve_device(ws.settings.tokenizer.device))
    fitted, current = tokenizer.config["settings"], stage_settings(ws.settings, "fit-tokenizer")
    for key, value in current.items():
        if fitted.get(key) != value:
            raise SemrecError(
                f"{ws.path(TOKENIZER)} was fitted with {key} = {fitted.get(key)!r}, "
                f"but {ws.project.path} says {value!r}",
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
    from semrec.embed import CachedEncoder, load_embeddings

    embeddings, metadata = load_embeddings(ws)
    tags = load_tags(ws, embeddings.shape[0])
    _check_inputs(ws, embeddings, tags)
    folder = ws.path(TOKENIZER)
    resume = bool(run.options.get("resume", True)) and not run.fresh

    def encode_tag_texts(texts: list[str]) -> torch.Tensor:
        encoder = CachedEncoder(ws.settings.embed, ws.reporter)
        vectors = encoder.encode(texts)
        encoder.save()
        return vectors

    started = time.perf_counter()
    tokenizer, summary = fit_tokenizer(
        ws.settings, embeddings, tags, folder / "checkpoints", run.fingerprint, ws.reporter, resume, encode_tag_texts
    )
    fit_seconds = time.perf_counter() - started
    tokenizer.config["embedding_model"] = metadata.get("model", ws.settings.embed.model)
    metrics = tokenizer_metrics(tokenizer, embeddings, tags)
    metrics.update(kind=tokenizer.config["kind"], steps=summary["steps"], fit_seconds=fit_seconds)
    if summary.get("history"):
        metrics["history"] = summary["history"]
    save_tokenizer(tokenizer, folder)
    atomic_write_json(folder / METRICS_FILE, metrics)
    figures = {k: v for k, v in metrics.items() if k not in ("history", "items")}
    return _rounded(figures)
