"""Ranking many users with a trained retriever: batched constrained beam search, sharded across ranks."""

import torch
from torch import Tensor

from semrec import distributed
from semrec.report import Reporter
from semrec.retriever.beam import beam_search


def rank_users(model, trie, batches, histories: Tensor, user_rows: Tensor, k: int, beam_size: int,
               batch_size: int, reporter: Reporter | None = None, description: str = "ranking") -> Tensor:
    """Top-k item ids (U, k) of each user by constrained beam search, batch_size users at a time.

    Users are decoded in order of history length so that a batch carries little padding. Under
    torchrun each rank decodes every world_size-th of these batches and the ranks' rows are merged:
    each batch holds the users it holds in one process, so the ranking is the same to the last digit.
    """
    reporter = reporter or Reporter()
    lengths = (histories >= 0).sum(1)
    order = torch.argsort(lengths, stable=True)
    starts = distributed.my_batches(len(order), batch_size)
    ranked = torch.zeros(len(histories), k, dtype=torch.long)  # 0 where another rank fills the row
    was_training = model.training
    model.eval()
    with reporter.progress(description, total=sum(len(order[s : s + batch_size]) for s in starts)) as bar:
        for start in starts:
            rows = order[start : start + batch_size]
            history, user = batches.decoding(histories[rows], user_rows[rows])
            ranked[rows] = beam_search(model, trie, history, user, k=k, beam_size=beam_size).items.cpu()
            bar.advance(len(rows))
    model.train(was_training)
    return distributed.merge(ranked)
