"""`semrec fit-baseline`: train SASRec in the shared loop; and load the trained one for `semrec eval`.

Writes baselines/sasrec/model.safetensors (weights, with the model config in its metadata) and
baselines/sasrec/metrics.json (the validation curve, the best step, training time and throughput).
It reads the same splits as the retriever, with its own history length, and selects its weights
on the validation targets only.
"""

import time
from dataclasses import dataclass

import torch

from semrec import distributed
from semrec.artifacts import INTERACTIONS, ITEMS, SASREC, SPLITS
from semrec.baselines.sasrec import SASRec, SASRecConfig, rank_items
from semrec.device import resolve_device
from semrec.errors import SemrecError
from semrec.io import atomic_write_json, read_weights, write_weights
from semrec.metrics import ranking_metrics
from semrec.retriever.data import Sequences, read_sequences
from semrec.train import TrainConfig, epoch_indices, train

VALID_K = 10
MODEL_FILE = "model.safetensors"


def _item_count(sequences: Sequences, ws) -> int:
    """Items in the catalogue: the items table's rows (the ids are 0..N-1), at least every id the splits use."""
    import polars as pl

    items = ws.path(ITEMS)
    known = pl.scan_parquet(items).select(pl.len()).collect().item() if items.exists() else 0
    largest = int(torch.cat([sequences.flat, sequences.valid, sequences.test]).max()) + 1
    return max(known, largest)


@dataclass
class StepBatch:
    pieces: list[tuple[torch.Tensor, torch.Tensor]]  # (items (b, n) left-padded with -1, is-target (b, n) bool)
    negatives: torch.Tensor | None  # (K,) sampled softmax only


class SASRecTask:
    """SASRec for semrec.train: windows of item ids, cross-entropy at every target, validation NDCG@10.

    On a CPU a step's windows are sorted by length and cut into `pieces`, each padded only to its
    own longest window: the same windows with far less padding (most users are short).
    """

    def __init__(self, model: SASRec, sequences: Sequences, device: torch.device, batch_size: int, seed: int,
                 valid_users: int, pieces: int = 4):
        sequences.require_windows()
        self.model, self.sequences, self.device = model, sequences, device
        self.batch_size, self.seed, self.pieces = batch_size, seed, pieces
        _, self.valid_histories, self.valid_targets = sequences.validation_sample(valid_users, seed)
        counts = torch.bincount(sequences.flat, minlength=model.cfg.n_items).double() + 1.0
        self.popularity = counts / counts.sum()  # where sampled negatives come from (+1: every item can be drawn)
        self.log_q = self.popularity.log().float().to(device)
        self.targets_seen = 0
        self.valid_seconds = 0.0

    def batch(self, step: int) -> StepBatch:
        """This rank's share of the step's windows (all of them in one process); the negatives of the whole step."""
        index = epoch_indices(len(self.sequences), self.batch_size, step, self.seed, drop_last=False)
        index = index[distributed.share(len(index))]
        self.targets_seen += self.sequences.targets_in(index)
        pieces = []
        for rows in self.sequences.pieces_by_length(index, self.pieces):
            items, targets, _ = self.sequences.training_items(index[rows])
            pieces.append((items.to(self.device), targets.to(self.device)))
        negatives = None
        if self.model.cfg.loss == "sampled":
            draw = torch.Generator().manual_seed(self.seed * 7919 + step)
            negatives = torch.multinomial(self.popularity, self.model.cfg.negatives, replacement=True,
                                          generator=draw).to(self.device)
        return StepBatch(pieces, negatives)

    def count(self, batch: StepBatch) -> int:
        """Targets the loss of `batch` is the mean of."""
        return sum(int(targets[:, 1:].sum()) for _, targets in batch.pieces)

    def loss(self, batch: StepBatch):
        """Each position's state predicts the item after it, where that item is a target; the mean over
        every target of the step."""
        total, count = 0.0, 0
        for items, targets in batch.pieces:
            states = self.model.hidden(items[:, :-1])  # (b, n-1, d)
            predicted = targets[:, 1:]
            n = int(predicted.sum())
            total = total + n * self.model.loss(states[predicted], items[:, 1:][predicted], batch.negatives, self.log_q)
            count += n
        return total / count, {}

    def validate(self) -> dict[str, float]:
        started = time.perf_counter()
        ranked = rank_histories(self.model, self.valid_histories, VALID_K)
        metrics = ranking_metrics(ranked, self.valid_targets, [VALID_K])
        self.valid_seconds += time.perf_counter() - started
        return {"score": metrics[f"ndcg@{VALID_K}"], **metrics}


def rank_histories(model: SASRec, histories: torch.Tensor, k: int, batch_size: int = 1024) -> torch.Tensor:
    """`rank_items` with the batches dealt round-robin to the ranks and merged: the same ranking as one process."""
    ranked = torch.zeros(len(histories), k, dtype=torch.long)  # 0 where another rank fills the row
    for start in distributed.my_batches(len(histories), batch_size):
        rows = slice(start, start + batch_size)
        ranked[rows] = rank_items(model, histories[rows], k, batch_size)
    return distributed.merge(ranked)


def _config(ws, n_items: int) -> SASRecConfig:
    s = ws.settings.baselines.sasrec
    return SASRecConfig(n_items=n_items, max_seq_len=s.max_seq_len, d_model=s.d_model, layers=s.layers, heads=s.heads,
                        ff_dim=s.ff_dim, dropout=s.dropout, loss=s.loss, negatives=s.negatives)


def read_baseline_sequences(ws, max_seq_len: int) -> Sequences:
    return read_sequences(ws.path(SPLITS), ws.path(INTERACTIONS), 0, max_seq_len, "causal")


def run_fit_baseline(ws, run) -> dict:
    """Train SASRec within baselines.sasrec.train (steps, and max_minutes as a time bound)."""
    s = ws.settings.baselines.sasrec
    seed = ws.settings.project.seed
    distributed.check_batch_size(s.train.batch_size, "baselines.sasrec.train.batch_size")
    device = resolve_device(s.device)
    torch.manual_seed(seed)
    sequences = read_baseline_sequences(ws, s.max_seq_len)
    config = _config(ws, _item_count(sequences, ws))
    if config.d_model % config.heads:
        raise SemrecError(f"baselines.sasrec.d_model = {config.d_model} is not divisible by heads = {config.heads}",
                          "choose heads that divide d_model, e.g. 1 or 2")
    model = SASRec(config).to(device)
    task = SASRecTask(model, sequences, device, s.train.batch_size, seed, s.valid_users,
                      pieces=1 if device.type == "cuda" else 4)
    ws.reporter.info(f"sasrec: {model.num_params():,} parameters, {config.loss} softmax over {config.n_items:,} items: "
                     f"{sequences.n_targets:,} targets in {len(sequences):,} windows, on {device}")
    folder = ws.path(SASREC)
    started = time.perf_counter()
    result = train(
        task,
        TrainConfig.from_settings(s.train, eval_every=s.eval_every, patience=s.patience, seed=seed, device=str(device),
                                  description="fit-baseline sasrec"),
        folder / "checkpoints", run.fingerprint, ws.reporter,
        resume=run.options.get("resume", True) and not run.fresh,
    )
    seconds = time.perf_counter() - started
    targets = distributed.sum_over_ranks(task.targets_seen)
    if not distributed.is_main():
        return {}
    best = result.best or {}
    write_weights(folder / MODEL_FILE, model.state_dict(),
                  {"config": model.cfg.to_dict(), "steps": result.steps, "best_step": best.get("step")})
    figures = {
        "model": "sasrec",
        "params": model.num_params(),
        **result.figures(VALID_K),
        "seconds": round(seconds, 1),
        "targets_per_s": round(targets / max(seconds - task.valid_seconds, 1e-9)),
    }
    atomic_write_json(folder / "metrics.json", {**figures, "history": result.history, "best": result.best,
                                               "validation_seconds": round(task.valid_seconds, 1)})
    return figures


def load_sasrec(ws, device: torch.device) -> tuple[SASRec, dict]:
    """The trained SASRec of this workspace and its file's metadata (steps, best step)."""
    from safetensors import SafetensorError

    path = ws.path(SASREC) / MODEL_FILE
    if not path.exists():
        raise SemrecError(f"no trained SASRec in {path.parent}", "run `semrec fit-baseline`")
    try:
        tensors, meta = read_weights(path, device)
        model = SASRec(SASRecConfig(**meta.pop("config"))).to(device)
        model.load_state_dict(tensors)
    except (OSError, SafetensorError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise SemrecError(f"cannot read the SASRec baseline {path}: {e}", "run `semrec fit-baseline --force`") from e
    model.eval()
    return model, meta
