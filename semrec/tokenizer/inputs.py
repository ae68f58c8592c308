"""What the tokenizer codes: each item's text embedding, and with `tokenizer.collaborative_weight` > 0
its SASRec item embedding beside it.

Semantic IDs from text alone put items that read alike under one first code, whatever users do with
them, and the retriever must then guess a first code that the histories barely predict. Appending a
collaborative embedding, learned from the training sequences only (SASRec of `semrec fit-baseline`),
lets the codes follow what users pick together as well (the idea of LETTER and EAGER, done here in the
simplest way: one concatenated vector per item). Each part is on the unit sphere (the text part per
`embed.normalize`); the collaborative one is scaled by the weight, so at weight 1 both parts count
alike in the quantiser's squared distances.

An item that no training sequence holds, or that was added after SASRec was trained (`semrec tokenize
--items`), has no collaborative embedding of its own. Zeros there would pull it away from every
first-level code whose items users pick together, so it borrows one instead: the mean collaborative
embedding of the `NEIGHBOURS` known items whose texts are nearest to its own.
"""

import torch
from torch import Tensor
from torch.nn.functional import normalize

from semrec.artifacts import SASREC, SPLITS
from semrec.errors import SemrecError

NEIGHBOURS = 10


def trained_items(ws, n_items: int) -> Tensor:
    """(n_items,) bool: the items some user's training sequence holds."""
    import polars as pl

    train = pl.read_parquet(ws.path(SPLITS), columns=["train"])["train"].explode().drop_nulls()
    ids = torch.from_numpy(train.to_numpy().astype("int64"))
    return torch.bincount(ids[ids < n_items], minlength=n_items) > 0


def borrowed(text: Tensor, collaborative: Tensor, known: Tensor) -> Tensor:
    """Collaborative vectors for the rows not `known`: the normalised mean over the NEIGHBOURS known rows
    of most similar `text`; the known rows as they are."""
    filled = collaborative.clone()
    missing = torch.nonzero(~known).squeeze(1)
    if len(missing) and known.any():
        pool_text, pool = normalize(text[known], dim=1), collaborative[known]
        for rows in missing.split(1024):  # a block of similarities at a time: bounded memory on large catalogues
            nearest = (normalize(text[rows], dim=1) @ pool_text.T).topk(min(NEIGHBOURS, len(pool)), dim=1).indices
            filled[rows] = normalize(pool[nearest].mean(1), dim=1)
    return filled


def collaborative_part(ws, text: Tensor) -> Tensor:
    """(N, d) the SASRec item embeddings of the N items of `text` (N, text_dim), unit length times the weight."""
    from semrec.baselines.fit import MODEL_FILE, load_sasrec

    model, _ = load_sasrec(ws, torch.device("cpu"))
    n_items, known = len(text), model.cfg.n_items
    path = ws.path(SASREC) / MODEL_FILE
    if known > n_items:
        raise SemrecError(
            f"the SASRec baseline {path} knows {known} items, but the item embeddings have {n_items}",
            "run `semrec fit-baseline --force` on the current data",
        )
    weights = model.item.weight.detach()[:known].float()
    if not torch.isfinite(weights).all():
        raise SemrecError(f"the item embeddings of the SASRec baseline {path} hold NaN or infinite values",
                          "run `semrec fit-baseline --force` (a lower baselines.sasrec.train.lr if it happens again)")
    vectors = torch.zeros(n_items, model.cfg.d_model)
    vectors[:known] = normalize(weights, dim=1)
    own = torch.zeros(n_items, dtype=torch.bool)
    own[:known] = trained_items(ws, known)
    return borrowed(text, vectors, own) * ws.settings.tokenizer.collaborative_weight


def with_collaborative(ws, text: Tensor) -> Tensor:
    """The tokenizer's inputs for the items of `text` (all items, rows in item order): text alone, or text
    and the collaborative part side by side."""
    if ws.settings.tokenizer.collaborative_weight == 0:
        return text
    return torch.cat([text, collaborative_part(ws, text)], 1)


def tokenizer_inputs(ws) -> tuple[Tensor, dict]:
    """The (N, d) vectors the tokenizer fits on and codes, and the embeddings' metadata."""
    from semrec.embed import load_embeddings

    embeddings, metadata = load_embeddings(ws)
    return with_collaborative(ws, embeddings), metadata
