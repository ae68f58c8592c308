"""Training throughput of all-positions ("causal") training against TIGER's prefix examples.

For each history cap and each mode, the same model (the project's [retriever] size) trains a few
steps on the project's real sequences with random semantic IDs of the usual shape (the cost of a
step does not depend on the codes' values): targets per second, tokens per second (real history
and target tokens, the work a step does), and an epoch's seconds projected from the measured
seconds per step and the number of steps an epoch takes (measured per step, projected per epoch).

    python bench/causal.py --project /path/to/beauty                      # cap = the project's max_seq_len
    python bench/causal.py --project /path/to/ml-1m --caps 50 100 200 --steps 3
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def random_ids(n_items: int, levels: int, codebook: int, collisions: int, seed: int = 0):
    import torch

    from semrec.retriever.data import SemanticIds

    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, codebook, (n_items, levels), generator=g)
    dedup = torch.randint(0, collisions, (n_items, 1), generator=g)
    return SemanticIds(torch.cat([codes, dedup], 1), codebook, "random")


def time_mode(settings, ws, mode: str, cap: int, batch_size: int, steps: int, device) -> dict:
    """Seconds per training step of `mode` at history cap `cap`, after one warm-up step."""
    import torch

    from semrec.artifacts import INTERACTIONS, SPLITS
    from semrec.retriever.data import Batches, read_sequences
    from semrec.retriever.model import RetrieverConfig, build_retriever
    from semrec.train import TrainConfig, _optimizer, epoch_indices

    s = settings.retriever
    s.max_seq_len = cap
    sequences = read_sequences(ws.path(SPLITS), ws.path(INTERACTIONS), s.user_bins, cap, mode)
    n_items = int(torch.cat([sequences.flat, sequences.valid, sequences.test]).max()) + 1
    ids = random_ids(n_items, settings.tokenizer.levels, settings.tokenizer.codebook_size, 4)
    torch.manual_seed(0)
    model = build_retriever(RetrieverConfig.from_settings(s, ids)).to(device).train()
    optimizer = _optimizer(model, TrainConfig(steps=steps, lr=s.train.lr, weight_decay=s.train.weight_decay))
    batches = Batches(ids, sequences, device, seed=0, pieces=1 if device.type == "cuda" else 4)
    tokens = targets = 0
    seconds = 0.0
    for step in range(steps + 1):
        index = epoch_indices(len(sequences), batch_size, step, 0, drop_last=False)
        started = time.perf_counter()
        pieces = batches.training(index, step)
        counts = [int(p.targets.sum()) for p in pieces]
        loss = sum(model(p).loss * c for p, c in zip(pieces, counts)) / sum(counts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step:  # the first step warms up
            seconds += time.perf_counter() - started
            tokens += batches.tokens(index)
            targets += batches.targets(index)
    per_step = seconds / steps
    steps_per_epoch = -(-len(sequences) // batch_size)
    return {
        "mode": mode, "cap": cap, "batch": batch_size, "windows": len(sequences), "targets_per_epoch": sequences.n_targets,
        "tokens_per_epoch": int(sequences.window_lengths(torch.arange(len(sequences))).sum()) * (settings.tokenizer.levels + 1),
        "s_per_step": round(per_step, 3), "targets_per_s": round(targets / seconds, 1), "tokens_per_s": round(tokens / seconds),
        "epoch_s": round(per_step * steps_per_epoch), "params": model.num_params(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, required=True, help="a project whose download stage is done")
    parser.add_argument("--caps", type=int, nargs="*", help="history caps (default: the project's max_seq_len)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case (after one warm-up step)")
    parser.add_argument("--batch", type=int, nargs=2, default=[256, 256], metavar=("PREFIX", "CAUSAL"),
                        help="batch sizes: prefix examples, causal windows")
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
    device = resolve_device(args.device)
    rows = []
    for cap in args.caps or [ws.settings.retriever.max_seq_len]:
        for mode, batch in (("prefix", args.batch[0]), ("causal", args.batch[1])):
            rows.append(time_mode(ws.settings, ws, mode, cap, batch, args.steps, device))
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
