"""Search a retriever training recipe on the validation split only, each trial bounded by CPU minutes.

Every trial trains the project's retriever with a few settings changed (JSON overrides of
[retriever] keys, "train.lr" for the training block) for `--minutes` of training, validating on a
fixed sample of validation users; the test split is never read. It prints one row per trial
(minutes, steps, seconds per step, best validation Recall@10 / NDCG@10 and the step it came at) and writes
each trial's learning curve to `--out`/<trial>.json. The learning-rate schedule of a trial spans
the steps its budget allows, estimated from timed steps before it starts; validation time counts.

    python bench/recipe.py --project /tmp/beauty --minutes 6 --trials bench/recipes/beauty.json --out /tmp/recipes
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def seconds_per_step(ws, device, steps: int = 4) -> float:
    """Seconds per training step of this workspace's task, timed after one warm-up step."""
    from bench.retriever import time_training
    from semrec.retriever.fit import build_task

    task, _ = build_task(ws, device)
    timed = time_training(task, ws.settings.retriever.train, device, steps, warmup=1)
    return timed["seconds"] / steps


def run_trial(source: Path, scratch: Path, name: str, overrides: dict, minutes: float, valid_users: int,
              validations: int) -> dict:
    from bench.overrides import with_settings
    from semrec.device import resolve_device
    from semrec.project import load_project
    from semrec.report import Reporter
    from semrec.retriever.fit import run_fit_retriever
    from semrec.workspace import StageRun, Workspace

    root = scratch / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for artifact in ("data", "tokenizer", "semantic_ids.parquet"):
        (root / artifact).symlink_to(source / artifact)
    project = load_project(explicit=source)
    settings = with_settings(project.settings, {f"retriever.{key}": value for key, value in overrides.items()})
    ws = Workspace(type(project)(path=root / "semrec.toml", settings=settings), Reporter())
    r = ws.settings.retriever
    r.valid_users, r.patience, r.train.checkpoint_every = valid_users, 0, 10**9
    per_step = seconds_per_step(ws, resolve_device(r.device))
    r.train.steps = max(r.train.warmup_steps + validations, int(minutes * 60 / per_step * 0.9))
    r.eval_every = max(1, r.train.steps // validations)
    r.train.max_minutes = minutes
    started = time.perf_counter()
    figures = run_fit_retriever(ws, StageRun("fit-retriever", name, fresh=True, options={"resume": False}))
    curve = json.loads(ws.path("retriever/metrics.json").read_text())
    windows = figures["steps"] * r.train.batch_size
    return {"trial": name, "overrides": overrides, "minutes": round((time.perf_counter() - started) / 60, 1),
            "steps": figures["steps"], "s_per_step": round(per_step, 3), "windows_seen": windows,
            "valid_recall@10": figures["valid_recall@10"], "valid_ndcg@10": figures["valid_ndcg@10"],
            "best_step": figures["best_step"], "params": figures["params"], "targets_per_s": figures["targets_per_s"],
            "curve": [e for e in curve["history"] if "valid_recall@10" in e]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, required=True, help="a project whose tokenize stage is done")
    parser.add_argument("--trials", type=Path, required=True, help='JSON {"name": {"key": value, ...}, ...}')
    parser.add_argument("--only", nargs="*", help="run only these trials")
    parser.add_argument("--minutes", type=float, default=6.0, help="training minutes per trial")
    parser.add_argument("--valid-users", type=int, default=2048, help="fixed sample of validation users")
    parser.add_argument("--validations", type=int, default=4, help="validations per trial (their time counts)")
    parser.add_argument("--out", type=Path, default=Path("recipe-trials"), help="folder for curves and scratch")
    args = parser.parse_args()

    import torch

    trials = json.loads(args.trials.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, overrides in trials.items():
        if args.only and name not in args.only:
            continue
        row = run_trial(args.project.resolve(), args.out / "scratch", name, overrides, args.minutes, args.valid_users,
                        args.validations)
        (args.out / f"{name}.json").write_text(json.dumps(row, indent=2))
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"recipe trials on the validation split ({torch.get_num_threads()} CPU threads)")
    columns = ["trial", "minutes", "steps", "s_per_step", "targets_per_s", "valid_recall@10", "valid_ndcg@10",
               "best_step", "params"]
    for column in columns:
        table.add_column(column, justify="left" if column == "trial" else "right")
    for row in rows:
        table.add_row(*(f"{row[c]:.4f}" if isinstance(row[c], float) and c.startswith("valid") else str(row[c])
                        for c in columns))
    Console().print(table)


if __name__ == "__main__":
    main()
