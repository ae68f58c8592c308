"""Ranking many users with a trained retriever: batched constrained beam search."""

import torch
from torch import Tensor

from semrec.report import Reporter
from semrec.retriever.beam import beam_search


def rank_users(model, trie, batches, histories: Tensor, user_rows: Tensor, k: int, beam_size: int,
               batch_size: int, reporter: Reporter | None = None, description: str = "ranking") -> Tensor:
    """Top-k item ids (U, k) of each user by constrained beam search, batch_size users at a time.

    Users are decoded in order of history length so that a batch carries little padding.
    """
    reporter = reporter or Reporter()
    lengths = (histories >= 0).sum(1)
    order = torch.argsort(lengths, stable=True)
    ranked = torch.empty(len(histories), k, dtype=torch.long)
    was_training = model.training
    model.eval()
    with reporter.progress(description, total=len(order)) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            history, user = batches.decoding(histories[rows], user_rows[rows])
            ranked[rows] = beam_search(model, trie, history, user, k=k, beam_size=beam_size).items.cpu()
            bar.advance(len(rows))
    model.train(was_training)
    return ranked
