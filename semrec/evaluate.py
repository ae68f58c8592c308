"""`semrec eval`: rank every user of the chosen split against the full catalogue, beside the baselines.

The test targets are read here and nowhere else. Under torchrun the users are sharded across the
ranks and their rankings merged (semrec.distributed): the same figures as one process; rank 0 writes.
"""

import time

import torch

from semrec.artifacts import EVAL_METRICS, INTERACTIONS, SPLITS
from semrec import distributed
from semrec.baselines.fit import load_sasrec, rank_histories, read_baseline_sequences
from semrec.baselines.popularity import popularity_ranking
from semrec.device import resolve_device
from semrec.errors import SemrecError
from semrec.io import atomic_write_json
from semrec.metrics import metrics_by_history_length, ranking_metrics
from semrec.retriever.data import Batches, read_sequences
from semrec.retriever.fit import load_trained
from semrec.retriever.rank import rank_users
from semrec.settings import BASELINES


def check_baselines(names: list[str], given_as: str) -> None:
    """Refuse names that are not baselines; `given_as` says where they came from (a setting, an option)."""
    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        raise SemrecError(f"{given_as} names {', '.join(map(repr, unknown))}, which is not a baseline",
                          f"choose among {', '.join(BASELINES)}")


def baseline_names(ws) -> list[str]:
    """The baselines to rank: those of eval.baselines, plus sasrec once `fit-baseline` is done."""
    names = list(dict.fromkeys(ws.settings.eval.baselines))
    check_baselines(names, "eval.baselines")
    if "sasrec" not in names and ws.state("fit-baseline").state == "done":
        names.append("sasrec")
    return names


def rank_baselines(ws, names: list[str], split: str, sequences, n_items: int, k: int) -> dict[str, dict]:
    """Each baseline's top-k (U, k) for every user of `split`, with what it is and how fast it ranked.

    `sequences` are the retriever's: popularity counts their training items."""
    rankings = {}
    for name in names:
        if name == "popularity":
            ranked = popularity_ranking(sequences.flat, n_items, k).expand(sequences.n_users, -1)
            rankings[name] = {"ranked": ranked, "info": {"name": "popularity"}}
        elif name == "sasrec":
            model, meta = load_sasrec(ws, resolve_device(ws.settings.baselines.sasrec.device))
            sequences = read_baseline_sequences(ws, model.cfg.max_seq_len)
            histories, _ = sequences.split_items(split)
            started = time.perf_counter()
            ranked = rank_histories(model, histories, k, batch_size=ws.settings.eval.batch_size * 4)
            seconds = time.perf_counter() - started
            rankings[name] = {"ranked": ranked, "info": {
                "name": "sasrec", "params": model.num_params(), "loss": model.cfg.loss, **meta,
                "seconds": round(seconds, 2), "users_per_s": round(len(histories) / max(seconds, 1e-9), 1)}}
    return rankings


def compare(metrics: dict, baselines: dict[str, dict]) -> dict | None:
    """The retriever's metrics divided by those of the best baseline (by the largest NDCG cut-off)."""
    if not baselines:
        return None
    key = max((m for m in metrics if m.startswith("ndcg@")), key=lambda m: int(m.split("@")[1]))
    best = max(baselines, key=lambda name: baselines[name][key])
    ratio = {m: round(v / baselines[best][m], 3) if baselines[best][m] > 0 else None for m, v in metrics.items()}
    return {"baseline": best, "by": key, "ratio": ratio}


def run_eval(ws, run) -> dict:
    """Rank every user of the chosen split against the full catalogue; write eval/metrics.json."""

    settings = ws.settings
    split = settings.eval.split
    ks = sorted(set(settings.eval.ks))
    if not ks or min(ks) < 1:
        raise SemrecError(f"eval.ks = {settings.eval.ks!r} must list cut-offs of at least 1", "e.g. ks = [5, 10]")
    names = baseline_names(ws)
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
    rankings = rank_baselines(ws, names, split, sequences, trained.n_items, max(ks))
    metrics = ranking_metrics(ranked, targets, ks)
    baselines = {name: ranking_metrics(r["ranked"], targets, ks) for name, r in rankings.items()}
    lengths = sequences.lengths + (1 if split == "test" else 0)  # the whole history before the target
    by_length = {name: metrics_by_history_length(r, targets, lengths, max(ks))
                 for name, r in {"retriever": ranked, **{n: r["ranked"] for n, r in rankings.items()}}.items()}
    result = {
        "split": split,
        "users": sequences.n_users,
        "items": trained.trie.size,
        "metrics": metrics,
        "baselines": baselines,
        "baseline_models": {name: r["info"] for name, r in rankings.items()},
        "vs_best_baseline": compare(metrics, baselines),
        "by_history_length": by_length,
        "model": {**trained.summary(), "beam_size": settings.eval.beam_size},
        "seconds": round(seconds, 2),
        "users_per_s": round(len(targets) / max(seconds, 1e-9), 1),
    }
    if distributed.is_main():
        atomic_write_json(ws.path(EVAL_METRICS), result)
    best = result["vs_best_baseline"]
    if best is not None:
        ws.reporter.info(f"{best['by']} is {best['ratio'][best['by']]}x that of the best baseline ({best['baseline']})")
    return result
