"""All ranking metrics, the popularity baseline, ranking many users with the retriever, and `semrec eval`.

A hit is the exact item: the whole semantic ID, collision token included. Every user is ranked
against the full catalogue. The test targets are read here and nowhere else.
"""

import torch
from torch import Tensor

from semrec.report import Reporter


def hit_ranks(ranked: Tensor, targets: Tensor) -> Tensor:
    """0-based rank of each user's target in its ranked list (U, k), or k when it is not there: (U,)."""
    hits = ranked == targets[:, None]  # (U, k)
    k = ranked.shape[1]
    return torch.where(hits.any(1), hits.float().argmax(1), k)


def recall_at_k(ranked: Tensor, targets: Tensor, k: int) -> float:
    """Share of users whose target is among the first k items (one target per user)."""
    return float((hit_ranks(ranked[:, :k], targets) < k).float().mean())


def ndcg_at_k(ranked: Tensor, targets: Tensor, k: int) -> float:
    """Mean of 1 / log2(rank + 2) over users whose target is in the first k (one relevant item: IDCG = 1)."""
    rank = hit_ranks(ranked[:, :k], targets).float()
    gain = torch.where(rank < k, 1.0 / torch.log2(rank + 2.0), 0.0)
    return float(gain.mean())


def ranking_metrics(ranked: Tensor, targets: Tensor, ks: list[int]) -> dict[str, float]:
    metrics = {f"recall@{k}": recall_at_k(ranked, targets, k) for k in ks}
    metrics.update({f"ndcg@{k}": ndcg_at_k(ranked, targets, k) for k in ks})
    return metrics


def popularity_ranking(train_items: Tensor, n_items: int, k: int) -> Tensor:
    """The k items seen most often in the training sequences, most popular first (ties: lower id)."""
    counts = torch.bincount(train_items, minlength=n_items)
    return torch.argsort(-counts, stable=True)[:k]


def rank_users(model, trie, batches, histories: Tensor, user_rows: Tensor, k: int, beam_size: int,
               batch_size: int, reporter: Reporter | None = None, description: str = "ranking") -> Tensor:
    """Top-k item ids (U, k) of each user by constrained beam search, batch_size users at a time.

    Users are decoded in order of history length so that a batch carries little padding.
    """
    from semrec.retriever.beam import beam_search

    reporter = reporter or Reporter()
    lengths = (histories >= 0).sum(1)
    order = torch.argsort(lengths, stable=True)
    ranked = torch.empty(len(histories), k, dtype=torch.long)
    was_training = model.training
    model.eval()
    with reporter.progress(description, total=len(order)) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = batches.evaluation(histories[rows], user_rows[rows], torch.zeros(len(rows), dtype=torch.long))
            ranked[rows] = beam_search(model, trie, batch.history, batch.user, k=k, beam_size=beam_size).items.cpu()
            bar.advance(len(rows))
    model.train(was_training)
    return ranked


def run_eval(ws, run) -> dict:
    """Rank every user of the chosen split against the full catalogue; write eval/metrics.json."""
    import time

    from semrec.retriever.data import Batches, read_sequences
    from semrec.retriever.fit import load_trained
    from semrec.device import resolve_device
    from semrec.artifacts import EVAL_METRICS, INTERACTIONS, SPLITS
    from semrec.io import atomic_write_json

    settings = ws.settings
    split = settings.eval.split
    ks = sorted(set(settings.eval.ks))
    if not ks or min(ks) < 1:
        from semrec.errors import SemrecError

        raise SemrecError(f"eval.ks = {settings.eval.ks!r} must list cut-offs of at least 1", "e.g. ks = [5, 10]")
    trained = load_trained(ws, resolve_device(settings.retriever.device))
    cfg = trained.model.cfg
    sequences = read_sequences(ws.path(SPLITS), ws.path(INTERACTIONS), cfg.user_bins, cfg.max_seq_len)
    batches = Batches(trained.ids, sequences, trained.device, settings.project.seed)
    histories, targets = sequences.split_items(split)
    user_rows = torch.arange(sequences.n_users)
    started = time.perf_counter()
    with trained.autocast():
        ranked = rank_users(trained.model, trained.trie, batches, histories, user_rows, k=max(ks),
                            beam_size=settings.retriever.beam_size, batch_size=settings.eval.batch_size,
                            reporter=ws.reporter, description=f"evaluating on {split}")
    seconds = time.perf_counter() - started
    popular = popularity_ranking(sequences.flat, trained.n_items, max(ks))
    result = {
        "split": split,
        "users": sequences.n_users,
        "items": trained.trie.size,
        "metrics": ranking_metrics(ranked, targets, ks),
        "baselines": {"popularity": ranking_metrics(popular.expand(len(targets), -1), targets, ks)},
        "model": {**trained.summary(), "beam_size": settings.retriever.beam_size},
        "seconds": round(seconds, 2),
        "users_per_s": round(len(targets) / max(seconds, 1e-9), 1),
    }
    atomic_write_json(ws.path(EVAL_METRICS), result)
    k = max(ks)
    model_recall, popular_recall = result["metrics"][f"recall@{k}"], result["baselines"]["popularity"][f"recall@{k}"]
    if popular_recall > 0:
        ws.reporter.info(f"Recall@{k} is {model_recall / popular_recall:.1f}x the popularity baseline's")
    return result
