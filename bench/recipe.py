"""Search a retriever training recipe on the validation split; read the test split only for the chosen trials.

Every trial trains the project's retriever with a few settings changed (JSON overrides of
[retriever] keys, "train.lr" for the training block, or any key under another table such as
"project.seed") and validates on a fixed sample of validation users. Two ways to size a trial:

- by CPU minutes (the default): the steps are set from timed steps so that training fits `--minutes`,
  the learning-rate schedule spanning them, with `--validations` validations;
- `--as-set`: the trial trains its own steps and validates every `retriever.eval_every` steps, as
  `semrec fit-retriever` would (a recipe searched on a GPU this way runs unchanged on a CPU);
  `--minutes` then only bounds it, and a trial that hits the bound is marked `cut`.

`--parallel N` runs N trials at once, each in its own process with its share of the CPU threads: a
small model's steps on a GPU are bound by one Python process's launch rate, not by the GPU.
`--deadline` bounds the whole search: no trial starts with less than half of `--minutes` left, and
each is bounded by what is left. It prints one row per trial (minutes, steps, seconds per step, best
validation Recall@10 / NDCG@10 and the step it came at), writes each trial's learning curve to
`--out`/<trial>.json and every row to `--out`/results.json. The test split is never read, except with
`--test`: after the search, the named trials and the best by validation NDCG@10 are evaluated on it
as `semrec eval` does (all users, full catalogue, exact item, eval.beam_size).

    python bench/recipe.py --project /tmp/beauty --minutes 6 --trials bench/recipes/beauty.json --out /tmp/recipes
    python bench/recipe.py --project WS --trials bench/recipes/beauty-gpu.json --as-set --device cuda \
        --parallel 8 --minutes 6 --deadline 8 --test preset --out /tmp/sweep
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TABLES = ("project.", "data.", "embed.", "tag.", "tokenizer.", "retriever.", "baselines.", "eval.")


def seconds_per_step(ws, device, steps: int = 4) -> float:
    """Seconds per training step of this workspace's task, timed after one warm-up step."""
    from bench.retriever import time_training
    from semrec.retriever.fit import build_task

    task, _ = build_task(ws, device)
    timed = time_training(task, ws.settings.retriever.train, device, steps, warmup=1)
    return timed["seconds"] / steps


def trial_workspace(source: Path, scratch: Path, name: str, overrides: dict, device: str, fresh: bool):
    """The trial's workspace under `scratch`: the source's data, semantic IDs and SASRec (the teacher of
    retriever.distill_weight, where the source has one), its own retriever."""
    from bench.overrides import with_settings
    from semrec.project import load_project
    from semrec.report import Reporter
    from semrec.workspace import Workspace

    root = scratch / name
    if fresh:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        for artifact in ("data", "tokenizer", "semantic_ids.parquet", "baselines"):
            if (source / artifact).exists():
                (root / artifact).symlink_to(source / artifact)
    project = load_project(explicit=source)
    values = {key if key.startswith(TABLES) else f"retriever.{key}": value for key, value in overrides.items()}
    if device:
        values["retriever.device"] = device
    settings = with_settings(project.settings, values)
    return Workspace(type(project)(path=root / "semrec.toml", settings=settings), Reporter())


def run_trial(source: Path, scratch: Path, name: str, overrides: dict, minutes: float, valid_users: int,
              validations: int, as_set: bool, device: str) -> dict:
    import torch

    from semrec.device import resolve_device
    from semrec.retriever.fit import run_fit_retriever
    from semrec.workspace import StageRun

    ws = trial_workspace(source, scratch, name, overrides, device, fresh=True)
    r = ws.settings.retriever
    r.valid_users, r.patience, r.train.checkpoint_every = valid_users, 0, 10**9
    where = resolve_device(r.device)
    per_step = seconds_per_step(ws, where)
    if not as_set:
        r.train.steps = max(r.train.warmup_steps + validations, int(minutes * 60 / r.ensemble / per_step * 0.9))
        r.eval_every = max(1, r.train.steps // validations)
    planned = r.train.steps
    r.train.max_minutes = minutes
    started = time.perf_counter()
    figures = run_fit_retriever(ws, StageRun("fit-retriever", name, fresh=True, options={"resume": False}))
    curve = json.loads(ws.path("retriever/metrics.json").read_text())
    windows = figures["steps"] * r.train.batch_size
    validated = [[e for e in history if "valid_recall@10" in e] for history in curve.get("member_histories", [curve.get("history")])]
    machine = torch.cuda.get_device_name(where) if where.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return {"trial": name, "overrides": overrides, "machine": machine, "minutes": round((time.perf_counter() - started) / 60, 1),
            "steps": figures["steps"], "steps_planned": planned * r.ensemble, "cut": figures["steps"] < planned * r.ensemble,
            "s_per_step": round(per_step, 4), "windows_seen": windows,
            "valid_recall@10": figures["valid_recall@10"], "valid_ndcg@10": figures["valid_ndcg@10"],
            "best_step": figures.get("best_step", figures.get("member_best_step")),
            "member_valid_ndcg@10": figures.get("member_valid_ndcg@10"),
            "params": figures["params"], "targets_per_s": figures["targets_per_s"],
            "validation_seconds": curve.get("validation_seconds"),
            "curve": validated[0] if len(validated) == 1 else validated}  # an ensemble's: one per member


def test_trial(source: Path, scratch: Path, name: str, overrides: dict, device: str) -> dict:
    """`semrec eval` of a trained trial on the test split: every user, the full catalogue, exact item."""
    from semrec.evaluate import run_eval
    from semrec.workspace import StageRun

    ws = trial_workspace(source, scratch, name, overrides, device, fresh=False)
    ws.settings.eval.split = "test"
    result = run_eval(ws, StageRun("eval", name))
    return {"split": "test", "users": result["users"], "seconds": result["seconds"], **result["metrics"],
            "baselines": result["baselines"]}


def child_command(args, name: str, minutes: float, threads: int) -> list[str]:
    command = [sys.executable, __file__, "--project", str(args.project), "--trials", str(args.trials), "--only", name,
               "--out", str(args.out), "--minutes", f"{minutes:.3f}", "--valid-users", str(args.valid_users),
               "--validations", str(args.validations), "--threads", str(threads)]
    command += ["--child"] + (["--as-set"] if args.as_set else [])
    return command + (["--device", args.device] if args.device else [])


def run_parallel(args, names: list[str], log, save) -> list[dict]:
    """Each trial in its own process, `args.parallel` at a time, within `args.deadline` minutes; `save(rows)`
    after each."""
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    deadline = time.monotonic() + args.deadline * 60 if args.deadline else float("inf")
    waiting, running, rows = list(names), {}, []
    while waiting or running:
        while waiting and len(running) < args.parallel:
            left = (deadline - time.monotonic()) / 60
            if left < args.minutes / 2:
                log(f"not started (only {left:.1f} min left): {', '.join(waiting)}")
                waiting = []
                break
            name = waiting.pop(0)
            minutes = min(args.minutes, left)
            output = (args.out / f"{name}.log").open("w")
            running[name] = (subprocess.Popen(child_command(args, name, minutes, threads), stdout=output,
                                              stderr=subprocess.STDOUT), output)
            log(f"started {name} ({minutes:.1f} min at most, {threads} threads)")
        time.sleep(1)
        for name, (process, output) in list(running.items()):
            if process.poll() is None:
                continue
            output.close()
            del running[name]
            result = args.out / f"{name}.json"
            if process.returncode == 0 and result.exists():
                rows.append(json.loads(result.read_text()))
                save(rows)
                log(json.dumps({k: v for k, v in rows[-1].items() if k != "curve"}))
            else:
                log(f"{name} failed (exit {process.returncode}); its log: {args.out / f'{name}.log'}")
    return rows


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    columns = ["trial", "minutes", "steps", "cut", "s_per_step", "targets_per_s", "valid_recall@10", "valid_ndcg@10",
               "best_step", "params"]
    for column in columns:
        table.add_column(column, justify="left" if column == "trial" else "right")
    for row in rows:
        table.add_row(*(f"{row[c]:.4f}" if isinstance(row[c], float) and c.startswith("valid") else str(row[c])
                        for c in columns))
    Console(width=200).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, required=True, help="a project whose tokenize stage is done")
    parser.add_argument("--trials", type=Path, required=True, help='JSON {"name": {"key": value, ...}, ...}')
    parser.add_argument("--only", nargs="*", help="run only these trials")
    parser.add_argument("--minutes", type=float, default=6.0, help="training minutes per trial (a bound with --as-set)")
    parser.add_argument("--as-set", action="store_true", help="train each trial's own steps, validating every eval_every")
    parser.add_argument("--valid-users", type=int, default=2048, help="fixed sample of validation users")
    parser.add_argument("--validations", type=int, default=4, help="validations per trial (their time counts)")
    parser.add_argument("--device", default="", help="cpu, cuda, ... ('' = the project's retriever.device)")
    parser.add_argument("--parallel", type=int, default=1, help="trials at once, each in its own process")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of this process (0 = torch's default)")
    parser.add_argument("--deadline", type=float, default=0.0, help="minutes for the whole search (0 = no bound)")
    parser.add_argument("--test", nargs="*", help="evaluate these trials and the best by validation on the test split")
    parser.add_argument("--out", type=Path, default=Path("recipe-trials"), help="folder for curves and scratch")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one trial of --parallel's
    args = parser.parse_args()
    args.project, args.trials, args.out = args.project.resolve(), args.trials.resolve(), args.out.resolve()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    trials = json.loads(args.trials.read_text())
    names = [name for name in trials if not args.only or name in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {message}", flush=True)

    def save(rows: list[dict], tests: dict | None = None) -> None:
        (args.out / "results.json").write_text(json.dumps({"trials": rows, "test": tests or {}}, indent=1))

    if args.parallel > 1:
        rows = run_parallel(args, names, log, save)
    else:
        rows = []
        for name in names:
            row = run_trial(args.project, args.out / "scratch", name, trials[name], args.minutes, args.valid_users,
                            args.validations, args.as_set, args.device)
            (args.out / f"{name}.json").write_text(json.dumps(row, indent=2))
            rows.append(row)
            if len(names) > 1:
                log(json.dumps({k: v for k, v in row.items() if k != "curve"}))
    if args.child:
        return
    tests = {}
    save(rows, tests)
    if args.test is not None and rows:
        best = max(rows, key=lambda row: row["valid_ndcg@10"])["trial"]
        log(f"best by validation NDCG@10: {best}")
        for name in dict.fromkeys([*args.test, best]):
            if any(row["trial"] == name for row in rows):
                tests[name] = test_trial(args.project, args.out / "scratch", name, trials[name], args.device)
                log(f"test {name}: {json.dumps(tests[name])}")
                save(rows, tests)
    if len(names) > 1 or args.parallel > 1:
        device = args.device or "the project's device"
        print_table(rows, f"recipe trials on the validation split ({device}, {args.parallel} at a time)")


if __name__ == "__main__":
    main()
