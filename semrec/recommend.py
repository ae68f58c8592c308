"""`semrec recommend`: load the retriever once, then answer for a known user or a given history.

Each answer lists rank, item key, title, score (the ID's summed log-probability), the semantic ID
and the item's tag path, so a readable ID (HiD-VAE) explains the recommendation. Start-up stays
lean: heavy modules are imported on load, and only the columns an answer needs are read.
"""

import difflib

from semrec.errors import SemrecError


def _close(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


class Recommender:
    """A trained retriever with the item names it needs; `for_user` and `for_history` answer."""

    def __init__(self, ws, trained, item_keys: list[str], titles: list[str]):
        self.ws, self.trained = ws, trained
        self.item_keys, self.titles = item_keys, titles
        self._index: dict[str, int] | None = None

    @classmethod
    def load(cls, ws) -> "Recommender":
        import polars as pl

        from semrec.retriever.fit import load_trained
        from semrec.device import resolve_device
        from semrec.artifacts import ITEMS

        trained = load_trained(ws, resolve_device(ws.settings.retriever.device))
        undecodable = int((~trained.decodable).sum())
        if undecodable:
            ws.reporter.warn(
                f"{undecodable} item(s) added since training have a collision token the retriever never "
                "learned, so they cannot be recommended yet; run `semrec fit-retriever` to include them"
            )
        path = ws.path(ITEMS)
        if not path.exists():
            raise SemrecError(f"{path} is missing", "run `semrec download`")
        items = pl.read_parquet(path, columns=["item", "item_key", "title"]).sort("item")
        return cls(ws, trained, items["item_key"].cast(pl.Utf8).to_list(), items["title"].fill_null("").to_list())

    # -- requests ----------------------------------------------------------------------------------
    def for_user(self, user_key: str, k: int = 10, exclude_seen: bool = True) -> dict:
        """The next items for a user of the dataset, after everything they interacted with."""
        import polars as pl

        from semrec.retriever.data import user_bins
        from semrec.artifacts import INTERACTIONS

        path = self.ws.path(INTERACTIONS)
        rows = (
            pl.scan_parquet(path).filter(pl.col("user_key").cast(pl.Utf8) == user_key)
            .select("item", "position").sort("position").collect()
        )
        if rows.height == 0:
            keys = pl.read_parquet(path, columns=["user_key"])["user_key"].cast(pl.Utf8).unique().to_list()
            raise SemrecError(
                f"unknown user {user_key!r}: not in {path}" + _close(user_key, keys),
                "give a user id as the dataset names it, or their items with --history KEY,KEY,...",
            )
        user = int(user_bins([user_key], self.trained.model.cfg.user_bins)[0])
        return self._recommend(rows["item"].to_list(), user, k, exclude_seen, user_key)

    def for_history(self, item_keys: list[str], k: int = 10, exclude_seen: bool = True) -> dict:
        """The next items after a history of item keys, for a user the data has never seen."""
        if not item_keys:
            raise SemrecError("the history is empty", "give at least one item key: --history KEY,KEY,...")
        if self._index is None:
            self._index = {key: i for i, key in enumerate(self.item_keys)}
        unknown = [key for key in item_keys if key not in self._index]
        if unknown:
            raise SemrecError(
                f"unknown item {unknown[0]!r}" + _close(unknown[0], self.item_keys)
                + (f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""),
                "use the item keys of data/items.parquet (column item_key)",
            )
        return self._recommend([self._index[key] for key in item_keys], -1, k, exclude_seen, None)

    # -- the answer --------------------------------------------------------------------------------
    def _recommend(self, items: list[int], user: int, k: int, exclude_seen: bool, user_key: str | None) -> dict:
        import torch

        from semrec.retriever.beam import beam_search
        from semrec.retriever.data import history_codes

        trained = self.trained
        device = trained.device
        seen = sorted(set(items))
        exclude = None
        available = trained.trie.size
        if exclude_seen:
            exclude = torch.zeros(1, trained.n_items, dtype=torch.bool, device=device)
            exclude[0, seen] = True
            available -= int((exclude[0] & trained.decodable).sum())
        if k < 1:
            raise SemrecError(f"--k {k}: ask for at least one item")
        if k > available:
            unseen = " that are not in the history" if exclude_seen else ""
            raise SemrecError(f"K = {k}, but only {available} items can be recommended{unseen}",
                              f"ask for at most {available}" + (", or pass --include-seen" if exclude_seen else ""))
        # a wider beam where seen items are dropped, so that k items remain after dropping them
        beam = min(max(self.ws.settings.eval.beam_size, k + (len(seen) if exclude_seen else 0)), trained.trie.size)
        window = torch.tensor(items[-trained.model.cfg.max_seq_len:], device=device)[None]  # (1, n)
        history = history_codes(trained.ids.codes.to(device), window)
        with trained.autocast():
            ranked = beam_search(trained.model, trained.trie, history, torch.tensor([user], device=device), k=k,
                                 beam_size=beam, exclude=exclude)
        chosen = [int(i) for i in ranked.items[0].tolist()]
        tags = self._tags(chosen)
        # only decodable items come out of the trie, and their collision tokens were never clamped:
        # these rows are the IDs as tokenized
        codes = dict(zip(chosen, trained.ids.codes[chosen].tolist()))
        return {
            "user": user_key,
            "k": k,
            "exclude_seen": exclude_seen,
            "history_length": len(items),
            "items": [
                {"rank": rank + 1, "item_key": self.item_keys[item] if item < len(self.item_keys) else str(item),
                 "title": self.titles[item] if item < len(self.titles) else "", "score": float(score),
                 "semantic_id": codes[item], "tags": tags.get(item, [])}
                for rank, (item, score) in enumerate(zip(chosen, ranked.scores[0].tolist()))
            ],
        }

    def _tags(self, items: list[int]) -> dict[int, list[str]]:
        """Each item's tag path (tags.parquet, when there is one), each level as its plain last component."""
        from semrec.artifacts import TAGS
        from semrec.tags import tag_label
        from semrec.tags.table import read_item_tags

        found = read_item_tags(self.ws.path(TAGS), items)
        return {item: [tag_label(tag) for tag in row.tags if tag] for item, row in found.items()}
