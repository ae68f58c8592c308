"""The report's key figures in a few numbers, for `semrec status`: read from the manifest's stage
figures and eval/metrics.json only (no tables, no plotting library), so that status stays instant.
"""

import json

from semrec.artifacts import EVAL_METRICS


def _pick(figures: dict, keys: tuple[str, ...]) -> dict:
    return {k: figures[k] for k in keys if figures.get(k) is not None}


def key_figures(ws, rows: list[dict]) -> dict:
    """{"data", "tokenizer", "retriever", "eval"}: each present only where its stage has figures."""
    figures = {row["stage"]: row["figures"] for row in rows}
    found = {
        "data": _pick(figures.get("download", {}), ("users", "items", "interactions")),
        "tokenizer": _pick(figures.get("tokenize") or figures.get("fit-tokenizer") or {},
                           ("kind", "collision_rate", "usage", "perplexity", "nmi")),
        "retriever": _pick(figures.get("fit-retriever", {}), ("arch", "valid_ndcg@10", "valid_recall@10", "best_step", "steps")),
    }
    path = ws.path(EVAL_METRICS)
    if path.is_file():
        result = json.loads(path.read_text())
        headline = max((m for m in result["metrics"] if m.startswith("ndcg@")), key=lambda m: int(m.split("@")[1]),
                       default=next(iter(result["metrics"])))
        models = {"retriever": result["metrics"], **result.get("baselines", {})}
        best = result.get("vs_best_baseline")
        found["eval"] = {"split": result.get("split"), "metric": headline,
                         "models": {name: values[headline] for name, values in models.items()},
                         "vs_best_baseline": {"baseline": best["baseline"], "ratio": best["ratio"].get(headline)} if best else None}
    return {name: value for name, value in found.items() if value}
