"""`semrec eval`: rank every user of the chosen split against the full catalogue, beside the baselines.

The test targets are read here and nowhere else.
"""

import time

import torch

from semrec.artifacts import EVAL_METRICS, INTERACTIONS, SPLITS
from semrec.baselines.popularity import popularity_ranking
from semrec.device import resolve_device
from semrec.errors import SemrecError
from semrec.io import atomic_write_json
from semrec.metrics import ranking_metrics
from semrec.retriever.data import Batches, read_sequences
from semrec.retriever.fit import load_trained
from semrec.retriever.rank import rank_users


def run_eval(ws, run) -> dict:
    """Rank every user of the chosen split against the full catalogue; write eval/metrics.json."""

    settings = ws.settings
    split = settings.eval.split
    ks = sorted(set(settings.eval.ks))
    if not ks or min(ks) < 1:
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
                            beam_size=settings.eval.beam_size, batch_size=settings.eval.batch_size,
                            reporter=ws.reporter, description=f"evaluating on {split}")
    seconds = time.perf_counter() - started
    popular = popularity_ranking(sequences.flat, trained.n_items, max(ks))
    result = {
        "split": split,
        "users": sequences.n_users,
        "items": trained.trie.size,
        "metrics": ranking_metrics(ranked, targets, ks),
        "baselines": {"popularity": ranking_metrics(popular.expand(len(targets), -1), targets, ks)},
        "model": {**trained.summary(), "beam_size": settings.eval.beam_size},
        "seconds": round(seconds, 2),
        "users_per_s": round(len(targets) / max(seconds, 1e-9), 1),
    }
    atomic_write_json(ws.path(EVAL_METRICS), result)
    k = max(ks)
    model_recall, popular_recall = result["metrics"][f"recall@{k}"], result["baselines"]["popularity"][f"recall@{k}"]
    if popular_recall > 0:
        ws.reporter.info(f"Recall@{k} is {model_recall / popular_recall:.1f}x the popularity baseline's")
    return result
