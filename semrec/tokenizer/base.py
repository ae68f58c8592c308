"""What a tokenizer kind is, as the `fit-tokenizer` and `tokenize` stages see it; where a new kind goes.

A kind maps item embeddings (N, d) to L codes per item. The stages (semrec/tokenizer/fit.py,
semrec/tokenizer/ids.py) know a kind only through `TokenizerKind`:

- `fit(inputs)`, a classmethod: build the model from `inputs.settings` and fit it on
  `inputs.embeddings`; return the fitted tokenizer and a summary {"steps": int, "history": [...]}
  ("steps" is 0 for a kind without a training loop; "history" is optional).
- `assign(embeddings)` -> codes (N, L) long, gaps (N,), errors (N,), all on the CPU. A gap is the
  distance of the item's latent to its quantised vector (it orders the items of a collision
  group), an error the reconstruction error |x - x̂|² (metrics.json).
- `save(folder)`: write the fitted state into `folder` (the stage writes config.json itself, from
  `tokenizer.config`); `load(folder, config, device)`, a classmethod: rebuild the tokenizer from
  config.json's dict and that state, or raise `SemrecError` when they disagree.
- optional: `extra_metrics(embeddings, tags) -> dict`, merged into metrics.json (hidvae: tag accuracy).

`ModuleTokenizer` implements all but `fit` for a kind whose fitted state is one `nn.Module`
rebuilt from `config["model"]`: such a kind names its model and config classes and writes `fit`
(rqvae, hidvae and rqkmeans all do so).

Adding a kind "mykind":

1. its module, semrec/tokenizer/mykind.py: the model with its config dataclass and that config's
   `from_settings(tokenizer_settings, input_dim, seed)`, and `MyKindTokenizer` implementing this
   protocol;
2. its line in `TOKENIZERS` in semrec/registry.py:
   `"mykind": Entry("semrec.tokenizer.mykind:MyKindTokenizer", reads=("mykind",))`
   (a plugin or a test calls `register_tokenizer` instead);
3. if it has settings of its own, a `@section class MyKindSettings` in semrec/settings.py and a
   field `mykind: MyKindSettings` in `TokenizerSettings`: the sub-table [tokenizer.mykind].

`reads` names the sub-tables of [tokenizer] that the kind reads besides the shared keys
(tokenizer.kind, levels, codebook_size, kmeans_iters and project.seed; tokenizer.device says only
where it runs; tokenizer.collaborative_weight once it is on, which changes the inputs of every
kind): rqvae reads ("rqvae", "train"). Those, and only those, make up fit-tokenizer's
settings fingerprint and config.json's "settings", so changing another kind's key neither makes
the fitted tokenizer stale nor stops it from loading; so a kind must read no other setting.
`needs` names the stages it needs besides embed: with ("tag",) it is given `inputs.tags`, and
fit-tokenizer stops with a clear message when tags.parquet is absent.
"""

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from semrec.errors import SemrecError
from semrec.io import atomic_path
from semrec.settings import Settings

MODEL_FILE = "model.safetensors"


@dataclass
class FitInputs:
    """Everything a kind's `fit` is given."""

    settings: Settings  # read only the shared keys of [tokenizer] and the kind's `reads` sub-tables
    config: dict  # config.json's shared entries (kind, levels, codebook_size, embedding_dim, settings, seed)
    embeddings: torch.Tensor  # (N, d) float, on the CPU
    device: torch.device  # where to fit
    tags: list[list[str]] | None = None  # one list of N tag strings per level, when tags.parquet exists
    checkpoint_dir: Path | None = None  # where a training loop keeps its checkpoints
    fingerprint: str = ""  # a checkpoint is resumed only under the same fingerprint
    reporter: object = None
    resume: bool = True
    encode_tag_texts: Callable[[list[str]], torch.Tensor] | None = None  # texts -> (n, text_dim)

    @property
    def seed(self) -> int:
        return self.settings.project.seed


class TokenizerKind(Protocol):
    config: dict  # config.json: the shared entries of FitInputs.config, "embedding_model", the kind's own

    @classmethod
    def fit(cls, inputs: FitInputs) -> tuple["TokenizerKind", dict]: ...

    def assign(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def save(self, folder: Path) -> None: ...

    @classmethod
    def load(cls, folder: Path, config: dict, device: torch.device | str) -> "TokenizerKind": ...


def check_embedding_dim(config: dict, embeddings: torch.Tensor) -> None:
    if embeddings.shape[1] != config["embedding_dim"]:
        raise SemrecError(
            f"the embeddings have {embeddings.shape[1]} dimensions but the tokenizer was fitted on "
            f"{config['embedding_dim']}",
            "run `semrec fit-tokenizer` again after changing the embedding model, tokenizer.collaborative_weight "
            "or baselines.sasrec.d_model",
        )


def state_mismatches(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], kind: str) -> list[str]:
    """What keeps the `tensors` of a file from loading into a model whose state_dict is `expected`."""
    problems = [f"{k}: missing" for k in expected if k not in tensors]
    problems += [f"{k}: not in a {kind} model" for k in tensors if k not in expected]
    problems += [
        f"{k}: shape {tuple(tensors[k].shape)} in the file, {tuple(v.shape)} in the config"
        for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape
    ]
    return problems


class ModuleTokenizer:
    """A kind whose fitted state is one nn.Module, `model`, with `assign(x) -> (codes, gaps, errors)`
    and its config dataclass as `model.config`, stored as config.json's "model".

    Subclasses name `model_class` and `config_class`, and write `fit`.
    """

    model_class: type[nn.Module]
    config_class: type

    def __init__(self, config: dict, model: nn.Module):
        self.config, self.model = config, model

    @classmethod
    def fitted(cls, inputs: FitInputs, model: nn.Module, **entries) -> "ModuleTokenizer":
        """The tokenizer of `model`: config.json is the shared entries, `entries` and the model config."""
        return cls({**inputs.config, **entries, "model": dataclasses.asdict(model.config)}, model)

    @classmethod
    def build(cls, config: dict) -> nn.Module:
        """The untrained model of a config.json."""
        return cls.model_class(cls.config_class(**config["model"]))

    @property
    def device(self) -> torch.device:
        return next(itertools.chain(self.model.parameters(), self.model.buffers())).device

    @torch.no_grad()
    def assign(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_embedding_dim(self.config, embeddings)
        codes, gaps, errors = self.model.assign(embeddings.to(self.device))
        return codes.cpu(), gaps.float().cpu(), errors.float().cpu()

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with atomic_path(folder / MODEL_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"kind": self.config["kind"]})

    @classmethod
    def load(cls, folder: Path, config: dict, device: torch.device | str = "cpu") -> "ModuleTokenizer":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = folder / MODEL_FILE
        if not path.exists():
            raise SemrecError(f"no fitted tokenizer in {folder}", "run `semrec fit-tokenizer`")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise SemrecError(f"the tokenizer in {folder} is unreadable: {e}", "run `semrec fit-tokenizer --force`") from e
        model = cls.build(config)
        problems = state_mismatches(model.state_dict(), tensors, config["kind"])
        if problems:
            raise SemrecError(
                f"{path} does not match {folder / 'config.json'}: " + "; ".join(problems[:5]),
                "run `semrec fit-tokenizer --force` to fit it again",
            )
        model.load_state_dict(tensors)
        model.eval()
        return cls(config, model.to(device))
