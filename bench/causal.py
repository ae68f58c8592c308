"""Training throughput of all-positions ("causal") training against TIGER's prefix examples.

For each history cap and each mode, the same model (the project's [retriever] size) trains a few
steps of the trainer's own step (bench/retriever.py's `time_training`) on the project's real
sequences with random semantic IDs of the usual shape (a step's cost does not depend on the
codes' values): targets per second, tokens per second (the real tokens of the windows), and an
epoch's seconds projected from the measured seconds per step and the number of steps an epoch
takes (measured per step, projected per epoch).

    python bench/causal.py --project /path/to/beauty                      # cap = the project's max_seq_len
    python bench/causal.py --project /path/to/beauty --arch decoder-only
    python bench/causal.py --project /path/to/ml-1m --caps 50 100 200 --steps 3
"""

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def scratch_workspace(source, root: Path, cap: int, mode: str, seed: int = 0):
    """A workspace in `root` over the source's data, with random semantic IDs of the usual shape."""
    import copy

    import polars as pl
    import torch

    from semrec.artifacts import ITEMS, SEMANTIC_IDS, TOKENIZER
    from semrec.io import atomic_write_json, write_parquet
    from semrec.project import Project
    from semrec.report import Reporter
    from semrec.workspace import Workspace

    settings = copy.deepcopy(source.settings)
    settings.retriever.max_seq_len, settings.retriever.training = cap, mode
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "data").exists():
        (root / "data").symlink_to(source.path("data"))
    ws = Workspace(Project(path=root / "semrec.toml", settings=settings), Reporter())
    n_items = pl.scan_parquet(source.path(ITEMS)).select(pl.len()).collect().item()
    levels, size = settings.tokenizer.levels, settings.tokenizer.codebook_size
    g = torch.Generator().manual_seed(seed)
    columns = {"item": torch.arange(n_items)}
    columns.update({f"code_{i + 1}": torch.randint(0, size, (n_items,), generator=g) for i in range(levels)})
    columns["dedup"] = torch.randint(0, 4, (n_items,), generator=g)
    write_parquet(pl.DataFrame({k: v.numpy() for k, v in columns.items()}), ws.path(SEMANTIC_IDS))
    atomic_write_json(ws.path(TOKENIZER) / "config.json", {"kind": "random", "levels": levels, "codebook_size": size})
    return ws


def time_mode(source, scratch: Path, mode: str, cap: int, batch_size: int, steps: int, device) -> dict:
    """Training speed of `mode` at history cap `cap`: the trainer's own step, after one warm-up step."""
    import torch

    from bench.retriever import time_training
    from semrec.retriever.fit import build_task

    ws = scratch_workspace(source, scratch / f"{mode}-{cap}", cap, mode)
    ws.settings.retriever.train.batch_size = batch_size
    task, _ = build_task(ws, device)
    timed = time_training(task, ws.settings.retriever.train, device, steps, warmup=1)
    sequences = task.batches.sequences
    per_step = timed["seconds"] / steps
    return {
        "mode": mode, "cap": cap, "batch": batch_size, "windows": len(sequences), "targets_per_epoch": sequences.n_targets,
        "tokens_per_epoch": task.batches.tokens(torch.arange(len(sequences))),
        "s_per_step": round(per_step, 3), "targets_per_s": round(timed["targets"] / timed["seconds"], 1),
        "tokens_per_s": round(timed["tokens"] / timed["seconds"]),
        "epoch_s": round(per_step * -(-len(sequences) // batch_size)), "params": task.model.num_params(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, required=True, help="a project whose download stage is done")
    parser.add_argument("--caps", type=int, nargs="*", help="history caps (default: the project's max_seq_len)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case (after one warm-up step)")
    parser.add_argument("--batch", type=int, nargs=2, default=[256, 256], metavar=("PREFIX", "CAUSAL"),
                        help="batch sizes: prefix examples, causal windows")
    parser.add_argument("--arch", help="the architecture (default: the project's retriever.arch)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from semrec.device import resolve_device
    from semrec.project import load_project
    from semrec.report import Reporter
    from semrec.workspace import Workspace

    ws = Workspace(load_project(explicit=args.project), Reporter())
    ws.require("download")
    if args.arch:
        ws.settings.retriever.arch = args.arch
    device = resolve_device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for cap in args.caps or [ws.settings.retriever.max_seq_len]:
            for mode, batch in (("prefix", args.batch[0]), ("causal", args.batch[1])):
                rows.append(time_mode(ws, Path(scratch), mode, cap, batch, args.steps, device))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if args.json:
        print(json.dumps({"machine": machine, "peak_gib": round(peak, 2), "rows": rows}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"causal vs prefix training on {machine} (peak memory {peak:.2f} GiB)")
    columns = ["cap", "mode", "batch", "windows", "targets_per_epoch", "tokens_per_epoch", "s_per_step",
               "targets_per_s", "tokens_per_s", "epoch_s"]
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(f"{row[c]:,}" if isinstance(row[c], (int, float)) else str(row[c]) for c in columns))
    for cap in sorted({row["cap"] for row in rows}):
        by_mode = {row["mode"]: row for row in rows if row["cap"] == cap}
        table.caption = (table.caption or "") + (
            f"cap {cap}: causal/prefix targets/s = {by_mode['causal']['targets_per_s'] / by_mode['prefix']['targets_per_s']:.1f}x; ")
    Console().print(table)


if __name__ == "__main__":
    main()
