"""Reading a retriever file back: one model, or an ensemble of them (both written by their `save`)."""

from pathlib import Path

import torch

from semrec.errors import SemrecError
from semrec.registry import ARCHITECTURES
from semrec.retriever.ensemble import Ensemble
from semrec.retriever.model import Retriever, RetrieverConfig


def load_retriever(path: Path, device: torch.device | str = "cpu", expect: dict | None = None) -> Retriever | Ensemble:
    """Rebuild the model (or the ensemble) of a file in eval mode; `expect` (arch and vocabulary fields)
    must match its config."""
    from safetensors import SafetensorError

    from semrec.io import read_weights

    try:
        tensors, meta = read_weights(path, device)
    except (OSError, SafetensorError, ValueError) as e:
        raise SemrecError(f"cannot read the retriever {path}: {e}", "run `semrec fit-retriever --force`") from e
    if "config" not in meta:
        raise SemrecError(f"{path} has no model config: it is not a semrec retriever", "run `semrec fit-retriever --force`")
    cfg = RetrieverConfig.from_dict(meta["config"])
    for key, wanted in (expect or {}).items():
        have = getattr(cfg, key)
        if have != wanted:
            raise SemrecError(
                f"the retriever in {path} was trained with {key} = {have!r}, but the current settings "
                f"and semantic IDs need {key} = {wanted!r}",
                "run `semrec fit-retriever` to train it for the current settings",
            )
    members = [ARCHITECTURES[cfg.arch].load()(cfg) for _ in range(int(meta.get("members", 1)))]
    model = Ensemble(members) if "members" in meta else members[0]  # items' IDs, if any, come with the weights
    model.to(device)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise SemrecError(f"{path} does not fit its own config: {e}", "run `semrec fit-retriever --force`") from e
    return model.eval()
