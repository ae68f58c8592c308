"""The one training loop: AdamW, warm-up and decay, clipping, bf16 autocast on CUDA, validation with
early stopping, checkpoints and exact resume. Both the tokenizer and the retriever train through it.

A task is any object with `model`, `batch(step)` and `loss(batch)`; optionally `validate()` (returns
metrics with a "score", higher is better), `after_step(step, batch)` and `count(batch)` (how many
terms the loss of `batch` is the mean of). Because `batch(step)` is a pure function of the step (see
`epoch_indices`) and the checkpoint carries the optimizer and RNG states, a resumed run continues
exactly where the interrupted one stopped.

Under torchrun the same loop runs in every rank (semrec.distributed): a task's `batch(step)` takes
the rank's share of the global batch, the loss goes through DistributedDataParallel and becomes the
mean over the global batch (weighted by `count`), validation is sharded by the task, and rank 0
alone writes checkpoints. Each rank's dropout is seeded by the step, so resume stays exact there too.

With `ema_decay` set, the loop also keeps an exponential moving average of the weights (`WeightAverage`):
validation scores the average, and the best average is what training leaves in the model.

Checkpoints are safetensors files (no pickles): tensors for the weights, the optimizer state, the
weight average and the RNG, JSON metadata for the rest, and the fingerprint of the stage's settings
and inputs; a checkpoint whose fingerprint differs is not resumed.
"""

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from semrec import distributed
from semrec.device import autocast as device_autocast
from semrec.errors import StageFailed
from semrec.io import atomic_path, cpu_copies, write_weights
from semrec.report import Reporter

LAST = "last.safetensors"
BEST = "best.safetensors"


@dataclass
class TrainConfig:
    steps: int
    lr: float
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine | inverse_sqrt
    grad_clip: float = 0.0
    checkpoint_every: int = 1000
    eval_every: int = 0  # 0: validate once, at the end
    patience: int = 0  # validations without improvement before stopping; 0: never stop early
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # bf16 autocast, on CUDA only
    max_seconds: float = 0.0  # stop (validating and checkpointing first) after this much training time; 0: no limit
    ema_decay: float = 0.0  # 0: validate and keep the weights themselves; else their moving average (WeightAverage)
    description: str = "training"

    @classmethod
    def from_settings(cls, block, **rest) -> "TrainConfig":
        """From a settings `train` block (semrec.settings.TrainingSettings); `rest` sets the other fields."""
        return cls(
            steps=block.steps, lr=block.lr, weight_decay=block.weight_decay, warmup_steps=block.warmup_steps,
            schedule=block.schedule, grad_clip=block.grad_clip, checkpoint_every=block.checkpoint_every,
            max_seconds=block.max_minutes * 60, ema_decay=block.ema_decay, **rest,
        )


@dataclass
class TrainResult:
    steps: int
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    stopped_early: bool = False

    def figures(self, k: int) -> dict:
        """How far training went and the best validation Recall/NDCG@k: what a trained stage reports."""
        best = self.best or {}
        return {"steps": self.steps, "best_step": best.get("step"), "stopped_early": self.stopped_early,
                f"valid_recall@{k}": best.get(f"recall@{k}"), f"valid_ndcg@{k}": best.get(f"ndcg@{k}")}


@lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def epoch_indices(n: int, batch_size: int, step: int, seed: int, drop_last: bool = True) -> torch.Tensor:
    """Indices of the examples of `step`: consecutive slices of a fresh seeded permutation per epoch.

    A pure function of its arguments, so the data order after a resume equals the uninterrupted one.
    drop_last: the tail that does not fill a batch is left out of that epoch (it is in the next one's
    shuffle); else it is the epoch's last, smaller batch, so every example is seen once per epoch.
    """
    per_epoch = max(1, n // batch_size if drop_last else -(-n // batch_size))
    epoch, k = divmod(step, per_epoch)
    perm = _permutation(n, seed, epoch)
    return perm if n <= batch_size else perm[k * batch_size : (k + 1) * batch_size]


def learning_rate(step: int, config: TrainConfig) -> float:
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "inverse_sqrt":
        return config.lr * math.sqrt(max(config.warmup_steps, 1) / max(step + 1, config.warmup_steps, 1))
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms or embeddings' 1-d parts)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


class WeightAverage:
    """An exponential moving average of a model's trainable weights, updated after every step:

        w_avg <- d * w_avg + (1 - d) * w,    d = min(decay, (1 + t) / (10 + t)) at step t,

    the second term so that the average forgets the initial weights within the first steps. Where the
    validation score plateaus while the weights keep moving, the average of the last ~1 / (1 - decay)
    steps (Polyak averaging) usually ranks better than the last step's weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.weights = [p for p in model.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.weights]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for average, weight in zip(self.average, self.weights):
            average.lerp_(weight.detach(), 1 - d)

    @contextlib.contextmanager
    def applied(self):
        """Inside the block the model's weights are the average; after it, their own values again."""
        own = [p.detach().clone() for p in self.weights]
        self.copy_into_model()
        try:
            yield
        finally:
            self._set_weights(own)

    def copy_into_model(self) -> None:
        self._set_weights(self.average)

    @torch.no_grad()
    def _set_weights(self, values: list[torch.Tensor]) -> None:
        for weight, value in zip(self.weights, values):
            weight.copy_(value)

    def tensors(self) -> dict[str, torch.Tensor]:
        return cpu_copies({str(i): a for i, a in enumerate(self.average)}, "average.")

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        for i, a in enumerate(self.average):
            a.copy_(tensors[f"average.{i}"])


def save_checkpoint(path: Path, model, optimizer, fingerprint: str, progress: dict,
                    average: WeightAverage | None = None) -> None:
    from safetensors.torch import save_file

    tensors = cpu_copies(model.state_dict(), "model.")
    if average is not None:
        tensors.update(average.tensors())
    opt = optimizer.state_dict()
    for index, slots in opt["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).detach().cpu().clone()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    metadata = {
        "fingerprint": fingerprint,
        "progress": json.dumps(progress),
        "param_groups": json.dumps(opt["param_groups"]),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_checkpoint(path: Path, model, optimizer, average: WeightAverage | None = None) -> dict:
    """Restore weights, optimizer, weight average and RNG; return the saved progress (step, history, best ...)."""
    from safetensors import safe_open

    device = next(model.parameters()).device
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value if name == "step" else value.to(device)
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    if average is not None:
        average.load(tensors)
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return json.loads(metadata["progress"])


def checkpoint_fingerprint(path: Path) -> str | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata().get("fingerprint")


def _finite_or_fail(loss: torch.Tensor, parts: dict, step: int, last_saved: int) -> None:
    if torch.isfinite(loss):
        return
    bad = [name for name, value in parts.items() if not math.isfinite(float(value))] or ["total"]
    kept = f"the last good checkpoint (step {last_saved}) is kept" if last_saved else "no checkpoint was saved yet"
    raise StageFailed(
        f"loss {', '.join(bad)} became {float(loss.detach())} at step {step}",
        f"{kept}; lower the learning rate or check the inputs for NaN, then run the command again",
    )


class Trainer:
    """One training run of a task: restore or start, then steps, logging, validation and checkpoints."""

    def __init__(self, task, config: TrainConfig, checkpoint_dir: Path, fingerprint: str, reporter: Reporter):
        self.task, self.config, self.fingerprint, self.reporter = task, config, fingerprint, reporter
        self.model = task.model
        self.device = next(self.model.parameters()).device
        self.optimizer = _optimizer(self.model, config)
        self.average = WeightAverage(self.model, config.ema_decay) if config.ema_decay else None
        self.validate_fn = getattr(task, "validate", None)
        self.after_step = getattr(task, "after_step", None)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.last_path, self.best_path = self.checkpoint_dir / LAST, self.checkpoint_dir / BEST
        self.autocast = device_autocast(self.device, config.amp)
        self.progress = {"step": 0, "history": [], "best": None, "bad_validations": 0, "stopped_early": False,
                         "seconds": 0.0}
        self.last_saved = 0
        self.running: dict[str, float] = {}
        self.main = distributed.is_main()
        self.parallel = distributed.data_parallel(task) if distributed.world_size() > 1 else None
        self.count = getattr(task, "count", None)

    def restore(self, resume: bool) -> None:
        """Continue from the last checkpoint when it was made for the same fingerprint; else start over."""
        if resume and self.last_path.exists():
            if checkpoint_fingerprint(self.last_path) == self.fingerprint:
                self.progress = load_checkpoint(self.last_path, self.model, self.optimizer, self.average)
                self.reporter.info(f"resuming {self.config.description} from its checkpoint at step {self.progress['step']}")
            else:
                self.reporter.warn(f"{self.last_path} was made with other settings or inputs: starting from scratch")
        elif not resume and self.main:
            self.last_path.unlink(missing_ok=True)
            self.best_path.unlink(missing_ok=True)
        self.last_saved = self.progress["step"]

    def step(self) -> tuple[torch.Tensor, dict]:
        """One optimizer step at progress["step"]; returns the loss and its parts."""
        step, config = self.progress["step"], self.config
        lr = learning_rate(step, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.parallel is not None:
            distributed.seed_step(config.seed, step)
        batch = self.task.batch(step)
        with self.autocast:
            objective, loss, parts = self.loss(batch)
        _finite_or_fail(loss, parts, step, self.last_saved)
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        if self.after_step is not None:
            with torch.no_grad():
                self.after_step(step, batch)
        if self.average is not None:
            self.average.update(step)
        self.progress["step"] = step + 1
        return loss, {**parts, "lr": lr}

    def loss(self, batch) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(what to backpropagate, the loss, its parts); across ranks, means over the global batch."""
        if self.parallel is None:
            loss, parts = self.task.loss(batch)
            return loss, loss, parts
        loss, parts = self.parallel(batch)
        return distributed.global_mean(loss, parts, self.count(batch) if self.count is not None else 1)

    def log(self, loss: torch.Tensor, parts: dict, bar, log_every: int) -> None:
        """Add the step's figures to the running means; every log_every steps, record and show them."""
        lr = parts.pop("lr")
        for name, value in {"loss": loss.detach(), **parts}.items():
            self.running[name] = self.running.get(name, 0.0) + float(value)
        step = self.progress["step"]
        if step % log_every == 0 or step == self.config.steps:
            n = log_every if step % log_every == 0 else step % log_every
            means = {name: total / n for name, total in self.running.items()}
            self.progress["history"].append({"step": step, "lr": lr, **means})
            bar.show(**means)
            self.running = {}

    def averaged(self):
        """A block in which the model holds the weights that are validated and kept: the average if there is one."""
        return self.average.applied() if self.average is not None else contextlib.nullcontext()

    def validate(self) -> None:
        """Validate; keep the best weights; count validations without improvement for early stopping."""
        progress = self.progress
        with self.averaged():
            self.model.eval()
            with torch.no_grad(), self.autocast:
                metrics = {k: float(v) for k, v in self.validate_fn().items()}
            self.model.train()
            best = progress["best"]
            improved = best is None or metrics["score"] > best["score"]
            if improved and self.main:
                write_weights(self.best_path, self.model.state_dict(), {})
        progress["history"].append({"step": progress["step"], **{f"valid_{k}": v for k, v in metrics.items()}})
        if improved:
            progress["best"] = {"step": progress["step"], **metrics}
            progress["bad_validations"] = 0
        else:
            progress["bad_validations"] += 1
        self.reporter.info(
            f"step {progress['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            + f" (best {progress['best']['score']:.4f} at step {progress['best']['step']})"
        )
        if self.config.patience and progress["bad_validations"] >= self.config.patience:
            progress["stopped_early"] = True

    def run(self) -> TrainResult:
        config, progress = self.config, self.progress
        log_every = max(1, min(100, config.steps // 100))
        self.model.train()
        # a run restored after its time was up stays stopped: resuming it changes nothing
        out_of_time = bool(config.max_seconds) and progress.get("seconds", 0.0) >= config.max_seconds
        started = time.monotonic() - progress.get("seconds", 0.0)
        with self.reporter.progress(config.description, total=config.steps) as bar:
            bar.advance(progress["step"])
            while progress["step"] < config.steps and not progress["stopped_early"] and not out_of_time:
                with distributed.peers_guard(progress["step"], self.last_saved):
                    out_of_time = self.advance(bar, log_every, started)
        self.finish(out_of_time)
        return TrainResult(steps=progress["step"], history=progress["history"], best=progress["best"],
                           stopped_early=progress["stopped_early"])

    def advance(self, bar, log_every: int, started: float) -> bool:
        """One step, then validation and a checkpoint when they are due; whether the time is up."""
        config, progress = self.config, self.progress
        loss, parts = self.step()
        bar.advance()
        self.log(loss, parts, bar, log_every)
        progress["seconds"] = time.monotonic() - started
        out_of_time = bool(config.max_seconds) and progress["seconds"] >= config.max_seconds
        if config.max_seconds:
            out_of_time = distributed.any_rank(out_of_time)  # every rank stops at the same step
            if out_of_time:  # as rank 0 saves it: a resumed run must find the time up on every rank
                progress["seconds"] = max(progress["seconds"], config.max_seconds)
        done = progress["step"] == config.steps or out_of_time
        if self.validate_fn is not None and (
                (config.eval_every and progress["step"] % config.eval_every == 0) or done):
            self.validate()
        if progress["step"] % config.checkpoint_every == 0 or done or progress["stopped_early"]:
            if self.main:
                self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
                save_checkpoint(self.last_path, self.model, self.optimizer, self.fingerprint, progress, self.average)
            self.last_saved = progress["step"]
        return out_of_time

    def finish(self, out_of_time: bool) -> None:
        """Say why training stopped, and leave the best validated weights in the model (without validation:
        the weight average, if there is one)."""
        from safetensors.torch import load_file

        if out_of_time:
            self.reporter.info(f"stopped at step {self.progress['step']}: the time limit of "
                               f"{self.config.max_seconds:.0f} s is reached")
        if self.progress["stopped_early"]:
            self.reporter.info(f"stopped early at step {self.progress['step']}: no improvement in "
                               f"{self.config.patience} validations")
        best_saved = self.progress["best"] is not None and self.best_path.exists()
        if self.main and self.validate_fn is not None and best_saved:  # other ranks write nothing: they keep the last
            self.model.load_state_dict(load_file(str(self.best_path), device=str(self.device)))
        elif self.average is not None:
            self.average.copy_into_model()


def train(task, config: TrainConfig, checkpoint_dir: Path, fingerprint: str, reporter: Reporter | None = None,
          resume: bool = True) -> TrainResult:
    """Train `task` under `config` (see the module docstring for what a task is)."""
    trainer = Trainer(task, config, checkpoint_dir, fingerprint, reporter or Reporter())
    trainer.restore(resume)
    return trainer.run()
