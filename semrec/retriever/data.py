"""The retriever's data: items as semantic-ID codes, users as leave-one-out item sequences.

A training example is a window of a user's training sequence (all items but the last two) and the
items of it that are targets, each predicted from the window's items before it:
- "causal" (all positions): a user's sequence is cut from its end into windows of at most
  max_seq_len + 1 items that share one item at their joints; every item of a window but its first
  is a target. Every training target is predicted exactly once per epoch, and an epoch costs the
  tokens the users have.
- "prefix" (TIGER): one window per target, the max_seq_len items before it and the target itself,
  which is the only one predicted. An epoch costs the sum of the history lengths.
The validation target (second-to-last item) is used for model selection only; the test target
(last item) is read only by `semrec eval`.
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


def history_codes(codes: Tensor, items: Tensor, trim: bool = True) -> Tensor:
    """Item ids (B, S), left-padded with -1 -> their codes (B, n, L+1), dropping all-padding columns
    unless `trim` is False (then n = S)."""
    if trim:
        n = int((items >= 0).sum(1).max()) if len(items) else 0
        items = items[:, items.shape[1] - n:]  # (B, n)
    return torch.where(items[..., None] >= 0, codes[items.clamp(min=0)], -1)  # (B, n, L+1)


def training_windows(lengths: Tensor, max_seq_len: int, mode: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Windows over sequences packed back to back: (start, end, first_target) indices into the packed
    items, end and first_target inclusive, and the sequence of each, one row per window (see the
    module docstring)."""
    starts = torch.cumsum(lengths, 0) - lengths
    owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths)  # (sum lengths,)
    position = torch.arange(int(lengths.sum())) - starts[owner]  # index within the user's sequence
    if mode == "prefix":
        end = torch.nonzero(position > 0)[:, 0]  # every item with one before it is a target
        start = torch.maximum(end - max_seq_len, starts[owner[end]])
        return start, end, end, owner[end]
    if mode != "causal":
        raise ValueError(f"training mode must be 'causal' or 'prefix', got {mode!r}")
    # window ends counted back from each sequence's last item in steps of max_seq_len
    from_end = lengths[owner] - 1 - position
    end = torch.nonzero((from_end % max_seq_len == 0) & (position > 0))[:, 0]
    start = torch.maximum(end - max_seq_len, starts[owner[end]])
    return start, end, start + 1, owner[end]


class Sequences:
    """The users of the splits, their training windows and their validation and test histories."""

    def __init__(self, flat: Tensor, lengths: Tensor, valid: Tensor, test: Tensor, users: Tensor, bins: Tensor,
                 max_seq_len: int, mode: str = "causal"):
        """flat: every user's training items, concatenated; lengths: (U,) items per user."""
        self.flat, self.lengths, self.valid, self.test = flat, lengths, valid, test
        self.users, self.bins, self.max_seq_len = users, bins, max_seq_len
        self.window_start, self.window_end, self.first_target, self.window_user = training_windows(
            lengths, max_seq_len, mode)

    def __len__(self) -> int:
        return len(self.window_end)

    @property
    def n_users(self) -> int:
        return len(self.lengths)

    @property
    def n_targets(self) -> int:
        return self.targets_in(torch.arange(len(self)))

    def targets_in(self, index: Tensor) -> int:
        """Target items in the windows `index`."""
        return int((self.window_end[index] - self.first_target[index] + 1).sum())

    def window_lengths(self, index: Tensor) -> Tensor:
        return self.window_end[index] - self.window_start[index] + 1

    def pieces_by_length(self, index: Tensor, pieces: int) -> tuple[Tensor, ...]:
        """Positions into the windows `index`, in `pieces` runs of similar length (sorted by it when
        pieces > 1): each run padded to its own longest window pads far less than the whole batch would."""
        if pieces == 1:
            return (torch.arange(len(index)),)
        return torch.argsort(self.window_lengths(index), stable=True).chunk(pieces)

    def window_positions(self, index: Tensor) -> Tensor:
        """Windows `index` (B,) -> where each of their items lies in the packed training items (B, n),
        left-padded with -1."""
        n = int(self.window_lengths(index).max())
        window = self.window_end[index][:, None] - n + 1 + torch.arange(n)  # (B, n)
        return torch.where(window >= self.window_start[index][:, None], window, -1)

    def training_items(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Windows `index` (B,) -> item ids (B, n) left-padded with -1, which are targets (B, n), user rows (B,)."""
        position = self.window_positions(index)
        items = torch.where(position >= 0, self.flat[position.clamp(min=0)], -1)
        return items, position >= self.first_target[index][:, None], self.window_user[index]

    def require_windows(self) -> None:
        """Refuse data with nothing to train on."""
        if len(self) == 0:
            raise SemrecError("no training examples: every user has a single training item",
                              "use data with longer user histories (data.min_interactions >= 4)")

    def validation_sample(self, users: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
        """Rows, histories and targets of the validation users: a fixed seeded sample of `users` (0: all)."""
        rows = torch.arange(self.n_users)
        if 0 < users < self.n_users:
            rows = torch.randperm(self.n_users, generator=torch.Generator().manual_seed(seed))[:users].sort().values
        histories, targets = self.split_items("valid")
        return rows, histories[rows], targets[rows]

    def split_items(self, split: str) -> tuple[Tensor, Tensor]:
        """Histories (U, S) and targets (U,) of every user for `split`: valid reads the training
        items; test reads the training items and the validation item."""
        if split == "valid":
            return last_items(self.flat, self.lengths, self.max_seq_len), self.valid
        if split == "test":
            before = last_items(self.flat, self.lengths, self.max_seq_len - 1)
            return torch.cat([before, self.valid[:, None]], 1), self.test
        raise ValueError(f"unknown split {split!r}")


def read_sequences(splits_path: Path, interactions_path: Path, bins: int, max_seq_len: int,
                   mode: str = "causal") -> Sequences:
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
        users=users, bins=user_bins(keys, bins), max_seq_len=max_seq_len, mode=mode,
    )


class Batches:
    """Training, validation and decoding batches on the device.

    `training(index, step)` is a pure function of its arguments (the user-token dropout is seeded by
    the step), so a resumed run sees the same batches as an uninterrupted one.
    """

    def __init__(self, ids: SemanticIds, sequences: Sequences, device: torch.device, seed: int, pieces: int = 1,
                 trim: bool = True):
        """pieces > 1: a training batch is sorted by window length and cut into that many pieces, each
        padded only to its own longest window (the same windows, far less padding: worth it on a
        CPU). trim = False pads every batch to max_seq_len + 1 items (fixed shapes, for torch.compile)."""
        self.codes = ids.codes.to(device)
        self.sequences = sequences
        self.device, self.seed, self.pieces, self.trim = device, seed, pieces, trim

    def training(self, index: Tensor, step: int, share: slice = slice(None)) -> list[Batch]:
        """The windows index[share] as `pieces` batches; together they hold every window of the share once.

        `index` is the step's whole batch: the user-token dropout is drawn for all of it, so that a
        rank's share (semrec.distributed.share) gets the draws one process would give it."""
        drop = torch.rand(len(index), generator=torch.Generator().manual_seed(self.seed * 7919 + step)) < USER_DROPOUT
        index, drop = index[share], drop[share]
        batches = []
        for rows in self.sequences.pieces_by_length(index, self.pieces):
            items, targets, user_row = self.sequences.training_items(index[rows])
            user = torch.where(drop[rows], -1, self.sequences.bins[user_row])
            batch = self._batch(items, user, targets, self.sequences.max_seq_len + 1)
            source = self.sequences.window_positions(index[rows]).to(self.device)
            batches.append(batch._replace(source=self._pad_like(source, batch.items.shape[1])))
        return batches

    def evaluation(self, history: Tensor, user_rows: Tensor, target: Tensor) -> Batch:
        """Histories (B, S) with their next item (B,) as one window each, whose last item is the target."""
        items = torch.cat([history, target[:, None]], 1)
        targets = torch.zeros(items.shape, dtype=torch.bool)
        targets[:, -1] = True
        return self._batch(items, self.sequences.bins[user_rows], targets, items.shape[1])

    def decoding(self, history: Tensor, user_rows: Tensor) -> tuple[Tensor, Tensor]:
        """What beam search reads: history codes (B, n, L+1), left-padded, and user bins (B,)."""
        batch = self._batch(history, self.sequences.bins[user_rows], torch.zeros(history.shape, dtype=torch.bool),
                            history.shape[1])
        return batch.items, batch.user

    def _batch(self, items: Tensor, user: Tensor, targets: Tensor, width: int) -> Batch:
        items, targets = items.to(self.device), targets.to(self.device)
        if not self.trim and items.shape[1] < width:  # fixed shapes: pad every batch to `width` items
            items, targets = self._pad_like(items, width), self._pad_like(targets, width)
        codes = history_codes(self.codes, items, trim=self.trim)  # (B, n, L+1)
        return Batch(items=codes, user=user.to(self.device), targets=targets[:, targets.shape[1] - codes.shape[1]:])

    @staticmethod
    def _pad_like(values: Tensor, width: int) -> Tensor:
        """(B, n) left-padded, or cut from the left, to (B, width): -1 (False for a mask) in front."""
        if values.shape[1] >= width:
            return values[:, values.shape[1] - width:]
        fill = False if values.dtype == torch.bool else -1
        pad = torch.full((len(values), width - values.shape[1]), fill, dtype=values.dtype, device=values.device)
        return torch.cat([pad, values], 1)

    def tokens(self, index: Tensor) -> int:
        """Real tokens (every item of the windows, not padding) in the training windows `index`."""
        return int(self.sequences.window_lengths(index).sum()) * self.codes.shape[1]

    def targets(self, index: Tensor) -> int:
        """Target items in the training windows `index`."""
        return self.sequences.targets_in(index)
