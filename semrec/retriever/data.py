"""The retriever's data: items as semantic-ID codes, users as leave-one-out item sequences.

Training examples follow TIGER: every prefix of a user's training sequence (all items but the last
two) predicts the item that follows it. The validation target (second-to-last item) is used for
model selection only; the test target (last item) is read only by `semrec eval`.
"""

import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from semrec.errors import SemrecError
from semrec.retriever.model import Batch

USER_DROPOUT = 0.1
"""Share of training examples whose user token is left out, so that a history given without a user
(`semrec recommend --history`) looks like something the model was trained on."""


@dataclass
class SemanticIds:
    """Every item's level-local codes: row i holds item i's code_1..code_L and its collision token."""

    codes: Tensor  # (N, L+1) int64
    codebook_size: int
    kind: str

    @property
    def levels(self) -> int:
        return self.codes.shape[1] - 1

    @property
    def collision_size(self) -> int:
        return int(self.codes[:, -1].max()) + 1

    def digest(self, n_items: int | None = None) -> str:
        """Content digest of the IDs of the first n_items items (all by default).

        Recorded with a trained retriever, it tells whether the tokenizer was refitted since, while
        items appended later by cold-start tokenization (rows past n_items) leave it unchanged.
        """
        rows = self.codes[: n_items if n_items is not None else len(self.codes)]
        return hashlib.sha256(rows.contiguous().numpy().astype("<i8").tobytes()).hexdigest()[:16]


def read_semantic_ids(ids_path: Path, tokenizer_dir: Path) -> SemanticIds:
    import polars as pl

    if not ids_path.exists():
        raise SemrecError(f"{ids_path} is missing", "run `semrec tokenize`")
    config_path = tokenizer_dir / "config.json"
    try:
        config = json.loads(config_path.read_text())
        levels, size, kind = int(config["levels"]), int(config["codebook_size"]), str(config.get("kind", "?"))
    except (OSError, ValueError, KeyError) as e:
        raise SemrecError(f"{config_path} is missing or has no levels/codebook_size: {e}", "run `semrec fit-tokenizer`") from e
    columns = ["item", *(f"code_{i}" for i in range(1, levels + 1)), "dedup"]
    try:
        frame = pl.read_parquet(ids_path, columns=columns).sort("item")
    except Exception as e:  # polars raises several types for a missing column or a broken file
        raise SemrecError(f"{ids_path} cannot be read with columns {columns}: {e}", "run `semrec tokenize --force`") from e
    items = torch.from_numpy(frame["item"].to_numpy().astype("int64"))
    if len(items) == 0 or not bool((items == torch.arange(len(items))).all()):
        raise SemrecError(f"{ids_path}: the items must be numbered 0..N-1 with one row each", "run `semrec tokenize --force`")
    codes = torch.from_numpy(frame.select(columns[1:]).to_numpy().astype("int64"))
    if bool((codes[:, :-1] >= size).any()) or bool((codes < 0).any()):
        raise SemrecError(f"{ids_path}: codes outside [0, {size}) (tokenizer/config.json codebook_size)",
                          "run `semrec tokenize --force`")
    return SemanticIds(codes=codes, codebook_size=size, kind=kind)


def user_bins(user_keys: list[str], bins: int) -> Tensor:
    """Hash each user key into one of `bins` user tokens (TIGER: 2000); -1 for all when bins = 0."""
    if bins == 0:
        return torch.full((len(user_keys),), -1, dtype=torch.long)
    return torch.tensor([zlib.crc32(key.encode("utf-8")) % bins for key in user_keys], dtype=torch.long)


def last_items(flat: Tensor, lengths: Tensor, n: int) -> Tensor:
    """The last n items of each sequence packed in `flat`, left-padded with -1: (U, n)."""
    ends = torch.cumsum(lengths, 0)  # (U,)
    index = ends[:, None] - n + torch.arange(n)  # (U, n)
    real = index >= (ends - lengths)[:, None]
    if len(flat) == 0:
        return torch.full(index.shape, -1, dtype=torch.long)
    return torch.where(real, flat[index.clamp(min=0)], -1)


def history_codes(codes: Tensor, items: Tensor) -> Tensor:
    """Item ids (B, S), left-padded with -1 -> their codes (B, n, L+1), dropping all-padding columns."""
    n = int((items >= 0).sum(1).max()) if len(items) else 0
    items = items[:, items.shape[1] - n:]  # (B, n)
    return torch.where(items[..., None] >= 0, codes[items.clamp(min=0)], -1)  # (B, n, L+1)


class Sequences:
    """The users of the splits, their training examples and their validation and test histories."""

    def __init__(self, flat: Tensor, lengths: Tensor, valid: Tensor, test: Tensor, users: Tensor, bins: Tensor,
                 max_seq_len: int):
        """flat: every user's training items, concatenated; lengths: (U,) items per user."""
        self.flat, self.lengths, self.valid, self.test = flat, lengths, valid, test
        self.users, self.bins, self.max_seq_len = users, bins, max_seq_len
        starts = torch.cumsum(lengths, 0) - lengths
        owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths)  # (sum lengths,)
        position = torch.arange(len(flat)) - starts[owner]  # index within the user's sequence
        keep = position > 0  # a target needs at least one item before it
        self.example_target = torch.arange(len(flat))[keep]  # (E,) index into flat
        self.example_user = owner[keep]
        self.example_start = starts[owner[keep]]
        self.example_history = position[keep].clamp(max=max_seq_len)  # (E,) items in each example's history

    def __len__(self) -> int:
        return len(self.example_target)

    @property
    def n_users(self) -> int:
        return len(self.lengths)

    def training_items(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Examples `index` (B,) -> history item ids (B, S) left-padded with -1, user rows (B,), targets (B,)."""
        target = self.example_target[index]
        window = target[:, None] - self.max_seq_len + torch.arange(self.max_seq_len)  # (B, S)
        real = window >= self.example_start[index][:, None]
        history = torch.where(real, self.flat[window.clamp(min=0)], -1)
        return history, self.example_user[index], self.flat[target]

    def split_items(self, split: str) -> tuple[Tensor, Tensor]:
        """Histories (U, S) and targets (U,) of every user for `split`: valid reads the training
        items; test reads the training items and the validation item."""
        if split == "valid":
            return last_items(self.flat, self.lengths, self.max_seq_len), self.valid
        if split == "test":
            before = last_items(self.flat, self.lengths, self.max_seq_len - 1)
            return torch.cat([before, self.valid[:, None]], 1), self.test
        raise ValueError(f"unknown split {split!r}")


def read_sequences(splits_path: Path, interactions_path: Path, bins: int, max_seq_len: int) -> Sequences:
    """The splits table as packed tensors, with each user's hashed user token."""
    import polars as pl

    if not splits_path.exists():
        raise SemrecError(f"{splits_path} is missing", "run `semrec download`")
    splits = pl.read_parquet(splits_path, columns=["user", "train", "valid", "test"]).sort("user")
    if splits.height == 0:
        raise SemrecError(f"{splits_path} has no users", "check data.min_interactions: every user was filtered out")
    lengths = torch.from_numpy(splits["train"].list.len().to_numpy().astype("int64"))
    flat = torch.from_numpy(splits["train"].explode().drop_nulls().to_numpy().astype("int64"))
    users = torch.from_numpy(splits["user"].to_numpy().astype("int64"))
    keys: list[str] = [str(u) for u in users.tolist()]
    if bins:
        names = (
            pl.scan_parquet(interactions_path).select("user", "user_key").unique("user")
            .join(splits.lazy().select("user"), on="user", how="right").sort("user").collect()
        )
        keys = names["user_key"].fill_null("").to_list()
    return Sequences(
        flat=flat, lengths=lengths,
        valid=torch.from_numpy(splits["valid"].to_numpy().astype("int64")),
        test=torch.from_numpy(splits["test"].to_numpy().astype("int64")),
        users=users, bins=user_bins(keys, bins), max_seq_len=max_seq_len,
    )


class Batches:
    """Training batches and evaluation batches on the device.

    `training(index, step)` is a pure function of its arguments (the user-token dropout is seeded by
    the step), so a resumed run sees the same batches as an uninterrupted one.
    """

    def __init__(self, ids: SemanticIds, sequences: Sequences, device: torch.device, seed: int, pieces: int = 1,
                 trim: bool = True):
        """pieces > 1: a training batch is sorted by history length and cut into that many pieces, each
        padded only to its own longest history (the same examples, far less padding: worth it on a
        CPU). trim = False pads every batch to max_seq_len (fixed shapes, for torch.compile)."""
        self.codes = ids.codes.to(device)
        self.sequences = sequences
        self.device, self.seed, self.pieces, self.trim = device, seed, pieces, trim

    def training(self, index: Tensor, step: int) -> list[Batch]:
        """The examples `index` as `pieces` batches; together they hold every example once."""
        drop = torch.rand(len(index), generator=torch.Generator().manual_seed(self.seed * 7919 + step)) < USER_DROPOUT
        if self.pieces > 1:
            order = torch.argsort(self.sequences.example_history[index], stable=True)
            index, drop = index[order], drop[order]
        batches = []
        for part, dropped in zip(index.chunk(self.pieces), drop.chunk(self.pieces)):
            history, user_row, target = self.sequences.training_items(part)
            batches.append(self._batch(history, torch.where(dropped, -1, self.sequences.bins[user_row]), target))
        return batches

    def evaluation(self, history: Tensor, user_rows: Tensor, target: Tensor) -> Batch:
        return self._batch(history, self.sequences.bins[user_rows], target)

    def _batch(self, history: Tensor, user: Tensor, target: Tensor) -> Batch:
        history = history.to(self.device)
        codes = history_codes(self.codes, history) if self.trim else torch.where(
            history[..., None] >= 0, self.codes[history.clamp(min=0)], -1
        )
        return Batch(history=codes, user=user.to(self.device), target=self.codes[target.to(self.device)])

    def tokens(self, index: Tensor) -> int:
        """Real tokens (history and target, not padding) in the training examples `index`."""
        per_item = self.codes.shape[1]
        return int((self.sequences.example_history[index].sum() + len(index)) * per_item)
