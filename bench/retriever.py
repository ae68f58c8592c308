"""Speed of the retriever: training tokens/s, evaluation users/s at beam 20, and `semrec recommend` latency.

Training: steps of the real training task (`build_task`: the project's model and batches, AdamW,
gradient clipping, bf16 autocast on CUDA) after three warm-up steps; tokens are the real (not
padding) history and target tokens. Evaluation: constrained beam search (beam 20, top 10) over the
validation histories of `--users` users, `eval.batch_size` users at a time, after a warm-up batch.
Recommend: one user's answer from a loaded `Recommender` (median of `--repeats` calls in a warm
process), and the whole `semrec recommend --json` command in a fresh process (median of `--cold`).

    python bench/retriever.py                         # a demo project in a temporary folder, CPU
    python bench/retriever.py --project PATH          # an existing project (recommend: if its retriever is up to date)
    python bench/retriever.py --device cuda --json
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(task, train, device, steps: int, warmup: int = 3) -> dict:
    """Seconds, tokens and targets of `steps` steps of the trainer's own step (autocast, clipping, AdamW)
    after `warmup` untimed ones; `train` is the settings' training block."""
    import torch

    from semrec.device import autocast
    from semrec.train import TrainConfig, _optimizer

    optimizer = _optimizer(task.model, TrainConfig(steps=steps, lr=train.lr, weight_decay=train.weight_decay))
    autocast_ctx = autocast(device)
    task.model.train()

    def step(i: int) -> None:
        batch = task.batch(i)
        with autocast_ctx:
            loss, _ = task.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(task.model.parameters(), train.grad_clip or 1.0)
        optimizer.step()

    for i in range(warmup):
        step(i)
    _sync(device)
    tokens, targets = task.tokens_seen, task.targets_seen
    started = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    _sync(device)
    return {"seconds": time.perf_counter() - started, "steps": steps, "tokens": task.tokens_seen - tokens,
            "targets": task.targets_seen - targets}


def bench_training(ws, device, steps: int) -> dict:
    from semrec.retriever.fit import build_task

    task, _ = build_task(ws, device)
    r = ws.settings.retriever
    timed = time_training(task, r.train, device, steps)
    return {
        "measure": "training",
        "setting": f"{r.arch}, {r.training}, {task.model.num_params():,} params, batch {r.train.batch_size}, {steps} steps",
        "value": timed["tokens"] / timed["seconds"], "unit": "tokens/s", "seconds": timed["seconds"],
        "targets_per_s": timed["targets"] / timed["seconds"], "task": task,
    }


def bench_evaluation(ws, device, task, users: int) -> dict:
    import torch

    from semrec.retriever.rank import rank_users
    from semrec.device import autocast

    sequences = task.batches.sequences
    histories, _ = sequences.split_items("valid")
    rows = torch.arange(min(users, sequences.n_users))
    autocast_ctx = autocast(device)
    batch_size = ws.settings.eval.batch_size
    with torch.no_grad(), autocast_ctx:
        rank_users(task.model, task.trie, task.batches, histories[rows[:batch_size]], rows[:batch_size], 10, 20, batch_size)
        _sync(device)
        started = time.perf_counter()
        rank_users(task.model, task.trie, task.batches, histories[rows], rows, 10, 20, batch_size)
        _sync(device)
    seconds = time.perf_counter() - started
    return {"measure": "evaluation", "setting": f"beam 20, top 10, {len(rows)} users, {batch_size} at a time",
            "value": len(rows) / seconds, "unit": "users/s", "seconds": seconds}


def bench_recommend(ws, repeats: int, cold: int) -> list[dict]:
    import polars as pl

    from semrec.recommend import Recommender
    from semrec.artifacts import INTERACTIONS

    user = pl.read_parquet(ws.path(INTERACTIONS), columns=["user_key"])["user_key"][0]
    started = time.perf_counter()
    recommender = Recommender.load(ws)
    load_seconds = time.perf_counter() - started
    recommender.for_user(user, k=10)
    warm = []
    for _ in range(repeats):
        started = time.perf_counter()
        recommender.for_user(user, k=10)
        warm.append(time.perf_counter() - started)
    command = [sys.executable, "-m", "semrec", "--project", str(ws.root), "recommend", "--user", user, "--json"]
    cold_runs = []
    for _ in range(cold):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=REPO)
        cold_runs.append(time.perf_counter() - started)
    return [
        {"measure": "recommend: load", "setting": "Recommender.load", "value": load_seconds * 1000, "unit": "ms"},
        {"measure": "recommend: warm", "setting": f"one user, k 10, median of {repeats}",
         "value": statistics.median(warm) * 1000, "unit": "ms"},
        {"measure": "recommend: cold CLI", "setting": f"`semrec recommend --json`, median of {cold}",
         "value": statistics.median(cold_runs) * 1000, "unit": "ms"},
    ]


def demo_workspace(folder: Path, args):
    from semrec.project import init_project, load_project, render_toml
    from semrec.report import Reporter
    from semrec.workspace import Workspace

    path = init_project("demo", folder)
    project = load_project(explicit=path)
    project.settings.data.demo_items, project.settings.data.demo_users = args.demo_items, args.demo_users
    project.settings.retriever.train.steps = 30  # latency needs a trained model, not a good one
    path.write_text(render_toml(project.settings))
    return Workspace(project, Reporter())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, help="an existing project (default: a demo in a temporary folder)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda (default: the project's retriever.device)")
    parser.add_argument("--steps", type=int, default=30, help="training steps timed")
    parser.add_argument("--users", type=int, default=1000, help="users ranked for the evaluation speed")
    parser.add_argument("--repeats", type=int, default=20, help="warm recommend calls")
    parser.add_argument("--cold", type=int, default=3, help="cold `semrec recommend` runs")
    parser.add_argument("--demo-items", type=int, default=3000)
    parser.add_argument("--demo-users", type=int, default=4000)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()

    import torch

    from semrec.project import load_project
    from semrec.report import Reporter
    from semrec.device import resolve_device
    from semrec.workspace import Workspace

    with tempfile.TemporaryDirectory() as scratch:
        ws = Workspace(load_project(explicit=args.project), Reporter()) if args.project else demo_workspace(Path(scratch), args)
        if args.device:
            ws.settings.retriever.device = args.device
        device = resolve_device(ws.settings.retriever.device)
        ws.ensure("tokenize")
        training = bench_training(ws, device, args.steps)
        rows = [training, bench_evaluation(ws, device, training.pop("task"), args.users)]
        if args.project is None:
            ws.ensure("fit-retriever")
        if ws.state("fit-retriever").state == "done":
            rows += bench_recommend(ws, args.repeats, args.cold)
        else:
            print(f"recommend latency skipped: the retriever of {ws.root} is not up to date (`semrec fit-retriever`)",
                  file=sys.stderr)
        machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        for row in rows:
            row["machine"] = machine
        if args.json:
            print(json.dumps(rows, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"retriever speed on {machine}")
        for column in ("measure", "setting", "value", "unit"):
            table.add_column(column, justify="right" if column == "value" else "left")
        for row in rows:
            table.add_row(row["measure"], row["setting"], f"{row['value']:,.1f}", row["unit"])
        Console().print(table)


if __name__ == "__main__":
    main()
