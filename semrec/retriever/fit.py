"""`semrec fit-retriever`: train the retriever in the shared loop; and load a trained one for eval and recommend.

Writes retriever/model.safetensors (weights + model config), retriever/config.json (the model
config, the digest of the semantic IDs it was trained on, the settings) and retriever/metrics.json
(the validation curve, the best step, training time and throughput).

With retriever.ensemble = N > 1 it trains N models one after the other, member i from seed
project.seed + i (its initial weights, data order and dropout), each validated on the same users
and given 1/N of train.max_minutes, and saves them together (semrec.retriever.ensemble): eval and
recommend then rank with all of them. Each member has its own checkpoints, so an interrupted fit
resumes inside the member it stopped in, and the finished ones are only read back.

With retriever.distill_weight > 0 every member also learns the ranking of the workspace's trained
SASRec (semrec.retriever.distill), which is read in training only.
"""

import dataclasses
import json
import time
from dataclasses import dataclass

import torch

from semrec import distributed
from semrec.errors import SemrecError
from semrec.metrics import ranking_metrics
from semrec.retriever.beam import ItemTrie
from semrec.retriever.checkpoint import load_retriever
from semrec.retriever.distill import Teacher, soft_cross_entropy, soft_target_source
from semrec.retriever.data import Batches, SemanticIds, read_semantic_ids, read_sequences
from semrec.retriever.ensemble import Ensemble
from semrec.retriever.model import Retriever, RetrieverConfig, build_retriever
from semrec.retriever.rank import rank_users
from semrec.device import autocast, resolve_device
from semrec.train import TrainConfig, TrainResult, epoch_indices, train
from semrec.artifacts import INTERACTIONS, RETRIEVER, SEMANTIC_IDS, SPLITS, TOKENIZER
from semrec.io import atomic_write_json

VALID_K = 10
FORMAT = 2
"""The retriever's file format: 2 = positions from the window's start and an item-causal encoder."""


class RetrieverTask:
    """The retriever for semrec.train: batches of windows, cross-entropy, validation Recall/NDCG@10."""

    def __init__(self, model: Retriever, batches: Batches, trie: ItemTrie, batch_size: int, seed: int,
                 beam_size: int, valid_users: int, eval_batch_size: int, valid_seed: int,
                 teacher: Teacher | None = None, distill_weight: float = 0.0):
        self.model, self.batches, self.trie = model, batches, trie
        self.teacher, self.distill_weight = teacher, distill_weight
        self.soft_targets = soft_target_source(teacher, batches) if teacher is not None else None
        self.batch_size, self.seed, self.beam_size, self.eval_batch_size = batch_size, seed, beam_size, eval_batch_size
        batches.sequences.require_windows()
        self.valid_rows, self.valid_histories, self.valid_targets = batches.sequences.validation_sample(
            valid_users, valid_seed)
        self.tokens_seen = self.targets_seen = 0
        self.valid_seconds = 0.0

    def batch(self, step: int):
        """This rank's share of the step's windows (all of them in one process), as pieces."""
        index = epoch_indices(len(self.batches.sequences), self.batch_size, step, self.seed, drop_last=False)
        share = distributed.share(len(index))
        self.tokens_seen += self.batches.tokens(index[share])
        self.targets_seen += self.batches.targets(index[share])
        return self.batches.training(index, step, share)

    def count(self, pieces) -> int:
        """Target tokens in the pieces: what the loss is the mean of."""
        return sum(int(piece.targets.sum()) for piece in pieces)

    def loss(self, pieces):
        """Mean cross-entropy over every target token of the step's pieces (with a teacher, mixed with the
        cross-entropy against its soft targets: semrec.retriever.distill)."""
        counts = [int(piece.targets.sum()) for piece in pieces]
        total = sum(self.piece_loss(piece) * count for piece, count in zip(pieces, counts))
        return total / sum(counts), {}

    def piece_loss(self, piece):
        output = self.model(piece)
        if self.soft_targets is None:
            return output.loss
        soft = soft_cross_entropy(output.logits, self.soft_targets(piece))
        return (1 - self.distill_weight) * output.loss + self.distill_weight * soft

    def validation_loss(self) -> float:
        """Mean loss over the validation users; each rank computes every world_size-th batch of them."""
        n, size = len(self.valid_rows), self.eval_batch_size
        totals = torch.zeros(-(-n // size), dtype=torch.float64)  # one per batch, summed in order below
        for start in distributed.my_batches(n, size):
            part = slice(start, start + size)
            batch = self.batches.evaluation(self.valid_histories[part], self.valid_rows[part], self.valid_targets[part])
            totals[start // size] = float(self.model(batch).loss) * len(batch.items)
        total = 0.0
        for value in distributed.merge(totals).tolist():
            total += value
        return total / n

    def validate(self) -> dict[str, float]:
        started = time.perf_counter()
        loss = self.validation_loss()
        metrics = self.rank_validation(self.model)
        self.valid_seconds += time.perf_counter() - started
        return {"score": metrics[f"ndcg@{VALID_K}"], **metrics, "loss": loss}

    def rank_validation(self, model) -> dict[str, float]:
        """Recall and NDCG@10 of a model (or an ensemble) on the validation users by constrained beam search."""
        ranked = rank_users(model, self.trie, self.batches, self.valid_histories, self.valid_rows, k=VALID_K,
                            beam_size=self.beam_size, batch_size=self.eval_batch_size)
        return ranking_metrics(ranked, self.valid_targets, [VALID_K])


def build_task(ws, device: torch.device, member: int = 0) -> tuple[RetrieverTask, SemanticIds]:
    """The model, data and validation of this workspace's retriever (of its ensemble's member `member`,
    seeded project.seed + member), ready for semrec.train."""
    s = ws.settings.retriever
    seed = ws.settings.project.seed + member
    torch.manual_seed(seed)
    ids = read_semantic_ids(ws.path(SEMANTIC_IDS), ws.path(TOKENIZER))
    sequences = read_sequences(ws.path(SPLITS), ws.path(INTERACTIONS), s.user_bins, s.max_seq_len, s.training)
    largest = int(torch.cat([sequences.flat, sequences.valid, sequences.test]).max())
    if largest >= len(ids.codes):
        raise SemrecError(f"item {largest} of {ws.path(SPLITS)} has no semantic ID in {ws.path(SEMANTIC_IDS)}",
                          "run `semrec tokenize --force`")
    config = RetrieverConfig.from_settings(s, ids)
    model = build_retriever(config, ids.codes[: config.item_ids]).to(device)
    compiled = s.compile and device.type == "cuda"
    # on a GPU one large batch is fastest (fixed shapes when compiled); on a CPU, less padding is
    batches = Batches(ids, sequences, device, seed, pieces=1 if device.type == "cuda" else 4, trim=not compiled)
    trie = ItemTrie(ids.codes, torch.arange(len(ids.codes)), config.level_sizes, device)
    model.use_trie(trie)
    teacher = None
    if s.distill_weight:
        from semrec.baselines.fit import load_sasrec

        teacher = Teacher(load_sasrec(ws, device)[0], trie, ids.codes)
    task = RetrieverTask(model, batches, trie, s.train.batch_size, seed, s.valid_beam_size, s.valid_users,
                         ws.settings.eval.batch_size, valid_seed=ws.settings.project.seed,
                         teacher=teacher, distill_weight=s.distill_weight)
    if compiled:
        model.compile()
    return task, ids


@dataclass
class Member:
    """One trained model of retriever.ensemble (with ensemble = 1, the model itself): how its training went."""

    model: Retriever
    result: TrainResult
    train_seconds: float
    valid_seconds: float
    tokens: int
    targets: int

    def figures(self) -> dict:
        return {**self.result.figures(VALID_K), "tokens_per_s": round(self.tokens / self.train_seconds),
                "targets_per_s": round(self.targets / self.train_seconds)}


def fit_member(ws, run, device: torch.device, member: int) -> tuple[Member, RetrieverTask, SemanticIds]:
    """Train member `member` of retriever.ensemble (seed project.seed + member) in its own checkpoint folder."""
    s = ws.settings.retriever
    task, ids = build_task(ws, device, member)
    model, sequences = task.model, task.batches.sequences
    which = f" {member + 1} of {s.ensemble}" if s.ensemble > 1 else ""
    ws.reporter.info(
        f"retriever{which}: {model.cfg.arch}, {model.num_params():,} parameters, {s.training} training: "
        f"{sequences.n_targets:,} targets in {len(sequences):,} windows of {sequences.n_users:,} users, on {device}"
    )
    config = TrainConfig.from_settings(
        s.train, eval_every=s.eval_every, patience=s.patience, seed=task.seed,
        device=str(device), description=f"fit-retriever{which}",
    )
    config.max_seconds /= s.ensemble  # the time bound is shared out between the members
    checkpoints = ws.path(RETRIEVER) / "checkpoints"
    started = time.perf_counter()
    result = train(task, config, checkpoints / f"member-{member + 1}" if s.ensemble > 1 else checkpoints,
                   run.fingerprint, ws.reporter, resume=run.options.get("resume", True) and not run.fresh)
    distributed.align_from_main([*model.parameters(), *model.buffers()])  # rank 0 alone loaded the best weights
    train_seconds = max(time.perf_counter() - started - task.valid_seconds, 1e-9)
    tokens, targets = distributed.sum_over_ranks(task.tokens_seen), distributed.sum_over_ranks(task.targets_seen)
    return Member(model, result, train_seconds, task.valid_seconds, tokens, targets), task, ids


def run_fit_retriever(ws, run) -> dict:
    """Train within retriever.train (steps, and max_minutes as a time bound); write retriever/."""
    s = ws.settings.retriever
    distributed.check_batch_size(s.train.batch_size, "retriever.train.batch_size")
    device = resolve_device(s.device)
    started = time.perf_counter()
    members = []
    for member in range(s.ensemble):  # only the last one's task (data, validation users) is kept
        trained, task, ids = fit_member(ws, run, device, member)
        members.append(trained)
    model = members[0].model if s.ensemble == 1 else Ensemble([m.model for m in members])
    if s.ensemble > 1:
        with torch.no_grad(), autocast(device):
            together = task.rank_validation(model.eval())
        ws.reporter.info(f"the ensemble of {s.ensemble}: " + ", ".join(f"{k} {v:.4f}" for k, v in together.items()))
    seconds = time.perf_counter() - started
    if not distributed.is_main():
        return {}
    folder = ws.path(RETRIEVER)
    steps = [m.result.steps for m in members]
    best_steps = [(m.result.best or {}).get("step") for m in members]
    if s.ensemble == 1:
        steps, best_steps = steps[0], best_steps[0]
    model.save(folder / "model.safetensors", {"steps": steps, "best_step": best_steps})
    atomic_write_json(folder / "config.json", {
        "format": FORMAT,
        "model": dataclasses.asdict(model.cfg),
        "members": s.ensemble,
        "params": model.num_params(),
        "semantic_ids": {"digest": ids.digest(), "items": len(ids.codes), "kind": ids.kind},
        "steps": steps,
        "best_step": best_steps,
        "settings": dataclasses.asdict(s),
    })
    train_seconds = sum(m.train_seconds for m in members)
    if s.ensemble == 1:
        how = members[0].result.figures(VALID_K)
    else:  # the ensemble's own validation, and what each member reached alone
        how = {"members": s.ensemble, "steps": sum(steps), **{f"valid_{k}": v for k, v in together.items()},
               f"member_valid_ndcg@{VALID_K}": [m.figures()[f"valid_ndcg@{VALID_K}"] for m in members],
               "member_best_step": best_steps}
    figures = {
        "arch": model.cfg.arch,
        "params": model.num_params(),
        **how,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(sum(m.tokens for m in members) / train_seconds),
        "targets_per_s": round(sum(m.targets for m in members) / train_seconds),
    }
    if s.ensemble == 1:
        curves = {"history": members[0].result.history, "best": members[0].result.best}
    else:
        curves = {"member_figures": [m.figures() for m in members],
                  "member_histories": [m.result.history for m in members]}
    atomic_write_json(folder / "metrics.json", {
        **figures, **curves, "validation_seconds": round(sum(m.valid_seconds for m in members), 1)})
    return figures


@dataclass
class Trained:
    """A trained retriever with the semantic IDs it decodes to, ready for eval and recommend."""

    model: Retriever | Ensemble
    config: dict  # retriever/config.json
    ids: SemanticIds  # every item's codes, collision tokens clamped to the trained range (history input)
    trie: ItemTrie  # the items the model can generate
    device: torch.device
    decodable: torch.Tensor  # (N,) bool: False for cold-start items whose collision token the model never learned

    @property
    def n_items(self) -> int:
        return len(self.ids.codes)

    def summary(self) -> dict:
        cfg = self.config["model"]
        kind = self.config["semantic_ids"]["kind"]
        members = self.config.get("members", 1)
        together = f", {members} seeds" if members > 1 else ""
        return {"name": f"{cfg['arch']} retriever ({kind} IDs{together})", "arch": cfg["arch"],
                "params": self.config["params"], "members": members, "tokenizer": kind, "steps": self.config["steps"],
                "best_step": self.config["best_step"]}

    def autocast(self):
        return autocast(self.device)


def load_trained(ws, device: torch.device) -> Trained:
    """The retriever of this workspace, checked against the current semantic IDs and settings.

    Items appended by cold-start tokenization after training use existing code tokens, so they can
    be recommended without retraining. One whose collision token is beyond what the model learned
    cannot be generated: it is left out of the trie (False in `decodable`) rather than clamped,
    since clamping would give it another item's whole ID. As history input its collision token is
    clamped, which only blurs which of the colliding items it was.
    """
    folder = ws.path(RETRIEVER)
    config_path = folder / "config.json"
    if not config_path.exists() or not (folder / "model.safetensors").exists():
        raise SemrecError(f"no trained retriever in {folder}", "run `semrec fit-retriever`")
    try:
        config = json.loads(config_path.read_text())
        trained_items, digest = int(config["semantic_ids"]["items"]), config["semantic_ids"]["digest"]
    except (ValueError, KeyError, TypeError) as e:
        raise SemrecError(f"{config_path} is corrupt: {e}", "run `semrec fit-retriever --force`") from e
    if config.get("format") != FORMAT:
        raise SemrecError(f"the retriever in {folder} was trained by an earlier semrec, whose model reads "
                          "positions differently", "run `semrec fit-retriever --force` to train it again")
    ids = read_semantic_ids(ws.path(SEMANTIC_IDS), ws.path(TOKENIZER))
    if len(ids.codes) < trained_items or ids.digest(trained_items) != digest:
        raise SemrecError(
            "the retriever was trained on other semantic IDs (the tokenizer was refitted since)",
            "run `semrec fit-retriever` to train it on the current IDs",
        )
    s = ws.settings.retriever
    expect = {"arch": s.arch, "levels": ids.levels, "codebook_size": ids.codebook_size, "user_bins": s.user_bins}
    model = load_retriever(folder / "model.safetensors", device, expect=expect)
    collisions = model.cfg.collision_size
    decodable = ids.codes[:, -1] < collisions
    rows = torch.nonzero(decodable)[:, 0]
    trie = ItemTrie(ids.codes[rows], rows, model.cfg.level_sizes, device)
    model.use_trie(trie)  # a trie_softmax model's loss and decoding: over the items it can generate now
    codes = ids.codes.clone()
    codes[:, -1].clamp_(max=collisions - 1)
    return Trained(model=model, config=config, ids=dataclasses.replace(ids, codes=codes), trie=trie, device=device,
                   decodable=decodable.to(device))
