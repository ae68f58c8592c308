"""Data parallelism on PyTorch's own engine: one process per device, started by `torchrun`.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (on one machine or many);
`start` joins the process group they describe: NCCL for CUDA tensors, gloo for CPU tensors. In one
process nothing here talks to anyone and every helper is the identity, so that path is unchanged.

What the rest of semrec relies on:
- the global batch is the setting; each rank takes its contiguous `share` of the step's seeded
  global batch, so the data order does not depend on the number of ranks and resume stays exact;
- the loss is the mean over the global batch: `global_mean` weights each rank's mean by its share
  of the terms, and DistributedDataParallel averages the gradients;
- rank 0 alone writes (checkpoints, artifacts, the manifest, progress) and holds the workspace lock;
- evaluation deals whole batches of users round-robin to the ranks (`my_batches`) and adds up the
  disjoint results (`merge`): every batch is computed as one process computes it, so the figures
  are the same to the last digit.

A rank that dies makes the collectives of the others fail (gloo: the peer's socket closes; else
the process group's timeout, SEMREC_RANK_TIMEOUT seconds), and `peers_guard` turns that into one
StageFailed; torchrun also stops the other workers once one exits with an error.
"""

import datetime
import hashlib
import os
from contextlib import contextmanager

import torch
import torch.distributed as dist

from semrec.errors import SemrecError, StageFailed

TIMEOUT_VARIABLE = "SEMREC_RANK_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0


class SameOnEveryRank(SemrecError):
    """A refusal every rank reaches alike (a check of what they share): rank 0 alone says it."""


def launched() -> bool:
    """Started by torchrun (or any launcher that sets its variables) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def _timeout() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_VARIABLE, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError as e:
        raise SemrecError(f"{TIMEOUT_VARIABLE} = {raw!r} is not a number of seconds", "e.g. 600") from e
    return datetime.timedelta(seconds=seconds)


def start(settings_digest: str) -> None:
    """Join torchrun's process group (nothing in one process) and refuse ranks that read other settings."""
    if not launched() or active():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    try:
        dist.init_process_group(backend, timeout=_timeout())
    except (RuntimeError, ValueError) as e:
        raise StageFailed(f"cannot join the other ranks: {e}",
                          "start every rank with the same torchrun command; check MASTER_ADDR and MASTER_PORT") from e
    _check_same_settings(settings_digest)


def stop() -> None:
    if active():
        dist.destroy_process_group()


def _check_same_settings(settings_digest: str) -> None:
    """Every rank must train the same thing: compare a digest of the settings across ranks."""
    value = int.from_bytes(hashlib.sha256(settings_digest.encode()).digest()[:6], "big")
    digests = [torch.zeros(1, dtype=torch.long) for _ in range(world_size())]
    dist.all_gather(digests, torch.tensor([value]))
    odd = [r for r, d in enumerate(digests) if int(d) != int(digests[0])]
    if odd:
        raise SameOnEveryRank(
            f"rank(s) {', '.join(map(str, odd))} read other settings than rank 0",
            "start every rank on the same project (the same semrec.toml, on a folder every machine sees)",
        )


def check_batch_size(batch_size: int, setting: str) -> None:
    """The setting is the global batch: it must divide among the ranks, with at least one example each."""
    world = world_size()
    if world == 1 or (batch_size >= world and batch_size % world == 0):
        return
    larger = max(world, -(-batch_size // world) * world)
    problem = ("is smaller than the number of ranks" if batch_size < world else "does not divide among the ranks")
    raise SameOnEveryRank(
        f"{setting} = {batch_size} {problem} ({world})",
        f"set {setting} to a multiple of {world}, e.g. {larger} (it is the global batch: each rank takes "
        f"{setting} / {world}), or start fewer processes",
    )


def share(n: int) -> slice:
    """This rank's contiguous part of a global batch of n examples.

    A batch smaller than the number of ranks (an epoch's last, partial one) is not split: every rank
    computes all of it, and the mean of equal gradients is that gradient.
    """
    world, me = world_size(), rank()
    if n < world:
        return slice(0, n)
    size, extra = divmod(n, world)
    begin = me * size + min(me, extra)
    return slice(begin, begin + size + (me < extra))


def my_batches(n: int, batch_size: int) -> list[int]:
    """The starts of the batches of n rows that this rank computes: every world_size-th one."""
    return list(range(0, n, batch_size))[rank()::world_size()]


def merge(part: torch.Tensor) -> torch.Tensor:
    """Every rank's results in one tensor, where each element was filled by one rank and is 0 on the others.

    A sum of one value and zeros is that value, exactly, so the merge changes no digit."""
    if world_size() == 1:
        return part
    merged = part.clone()
    dist.all_reduce(merged)
    return merged


def sum_over_ranks(value: float) -> float:
    if world_size() == 1:
        return value
    total = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(total)
    return float(total)


def any_rank(flag: bool) -> bool:
    """Whether `flag` holds on some rank: a decision every rank then takes alike."""
    if world_size() == 1:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value)


def global_mean(loss: torch.Tensor, parts: dict, count: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(what to backpropagate, the loss and its parts as means over the global batch).

    `loss` is this rank's mean over its `count` terms (targets, items). DistributedDataParallel
    averages gradients over the W ranks, so backpropagating loss · count · W / total gives the
    gradient of the mean over all `total` terms: what one process computes on the whole batch.
    """
    figures = torch.tensor([count, float(loss.detach()) * count, *(float(v) * count for v in parts.values())],
                           dtype=torch.float64)
    dist.all_reduce(figures)
    total = float(figures[0])
    means = (figures[1:] / total).tolist()
    mean_loss = torch.tensor(means[0], dtype=torch.float64)
    return loss * (count * world_size() / total), mean_loss, dict(zip(parts, means[1:]))


def seed_step(seed: int, step: int) -> None:
    """Seed this rank's random numbers (dropout) from the seed, the step and the rank.

    Each rank draws its own masks, and a resumed run draws the same ones as an uninterrupted run,
    whatever RNG state the checkpoint (written by rank 0) carries."""
    torch.manual_seed((seed * 1_000_003 + step) * 1009 + rank())


def align_from_main(tensors) -> None:
    """Overwrite these tensors with rank 0's (for parameters a task changes in place, outside the gradient)."""
    if world_size() == 1:
        return
    for tensor in tensors:
        dist.broadcast(tensor.data, src=0)


class TaskLoss(torch.nn.Module):
    """The task's loss as a module's forward, so that DistributedDataParallel sees every step of it,
    whatever methods of the model the task calls (SASRec calls `hidden` and `loss`, not `forward`)."""

    def __init__(self, task):
        super().__init__()
        self.model = task.model
        self.task = task

    def forward(self, batch):
        return self.task.loss(batch)


def data_parallel(task) -> torch.nn.Module:
    """The task's loss wrapped in DistributedDataParallel (which first copies rank 0's weights to every rank)."""
    from torch.nn.parallel import DistributedDataParallel

    device = next(task.model.parameters()).device
    return DistributedDataParallel(TaskLoss(task), device_ids=[device.index] if device.type == "cuda" else None)


@contextmanager
def peers_guard(step: int, last_saved: int):
    """Turn the failure of a collective (another rank died or hung) into one StageFailed."""
    try:
        yield
    except RuntimeError as e:  # dist.DistError is one
        if world_size() == 1 or not _is_peer_failure(e):
            raise
        kept = f"the last checkpoint (step {last_saved}) is kept" if last_saved else "no checkpoint was saved yet"
        raise StageFailed(
            f"rank {rank()}: another rank stopped or stopped answering at step {step} "
            f"({str(e).splitlines()[0][:200]})",
            f"{kept}; see the other rank's message, fix it, and run the same torchrun command again to resume",
        ) from e


def _is_peer_failure(error: Exception) -> bool:
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return any(word in text for word in ("gloo", "nccl", "connection", "peer", "timed out", "timeout", "socket"))
