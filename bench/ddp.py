"""What data parallelism costs on one CPU: 2 gloo ranks of 1 thread against 1 process of 2 threads.

Both train the same stage (`fit-baseline`: SASRec in the shared training loop, which needs no
embedding model) on a demo project, at the same global batch and for the same steps, through the
real command (`semrec fit-baseline --force --json`, under `torchrun --nproc_per_node 2` for the
ranks). The figure compared is the stage's own training throughput (targets/s, validation time
left out); wall time includes starting the processes and the final validation.

On a CPU the two setups share the same cores, so the ranks can only lose (gradient all-reduce,
the loss's all-reduce, one Python interpreter more): this measures that overhead, not a speed-up.

    python bench/ddp.py                      # demo of 2,000 users, 40 steps of batch 256
    python bench/ddp.py --steps 100 --batch 512 --json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def demo_project(folder: Path, args) -> Path:
    """A demo project with its data prepared, SASRec set to `args.steps` steps of batch `args.batch`."""
    from semrec.project import init_project, load_project, render_toml
    from semrec.report import Reporter
    from semrec.workspace import Workspace

    path = init_project("demo", folder)
    project = load_project(explicit=path)
    s = project.settings
    s.data.demo_items, s.data.demo_users = args.demo_items, args.demo_users
    sasrec = s.baselines.sasrec
    sasrec.train.steps, sasrec.train.batch_size, sasrec.device = args.steps, args.batch, "cpu"
    sasrec.eval_every, sasrec.valid_users, sasrec.train.checkpoint_every = args.steps, 256, args.steps
    path.write_text(render_toml(s))
    Workspace(load_project(explicit=path), Reporter()).ensure("download")
    return folder


def run_setup(folder: Path, ranks: int, threads: int) -> dict:
    """Train once in `ranks` processes of `threads` threads each; the stage's figures and the wall time."""
    semrec = ["-m", "semrec", "-p", str(folder), "fit-baseline", "--force", "--json"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks)] if ranks > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run(launcher + semrec, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{ranks} rank(s) x {threads} thread(s) failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout[done.stdout.index("{"):])
    return {"setup": f"{ranks} rank{'s' if ranks > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}",
            "backend": "gloo" if ranks > 1 else "-", "wall_s": wall, "targets_per_s": figures["targets_per_s"],
            "train_s": figures["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="training steps of each run")
    parser.add_argument("--batch", type=int, default=256, help="the global batch (windows per step), the same in both")
    parser.add_argument("--demo-items", type=int, default=1500)
    parser.add_argument("--demo-users", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        folder = demo_project(Path(scratch), args)
        rows = [run_setup(folder, ranks=1, threads=2), run_setup(folder, ranks=2, threads=1)]
    base = rows[0]["targets_per_s"]
    for row in rows:
        row.update(global_batch=args.batch, steps=args.steps, relative=row["targets_per_s"] / base)
    rows[1]["per_rank_batch"], rows[0]["per_rank_batch"] = args.batch // 2, args.batch
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"fit-baseline (SASRec), {args.steps} steps of global batch {args.batch}, on {os.cpu_count()} CPUs")
    for column in ("setup", "backend", "per-rank batch", "targets/s", "vs 1 x 2", "train s", "wall s"):
        table.add_column(column, justify="left" if column in ("setup", "backend") else "right")
    for row in rows:
        table.add_row(row["setup"], row["backend"], str(row["per_rank_batch"]), f"{row['targets_per_s']:,}",
                      f"{row['relative']:.2f}x", f"{row['train_s']:.1f}", f"{row['wall_s']:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
