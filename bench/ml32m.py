"""MovieLens-32M at full shape on one machine: every stage up to a measured cost model of the retriever.

    python bench/ml32m.py --root /tmp/ml32m [--local-dir DIR] [--tokenizer-minutes 5] [--retriever-minutes 5]
        [--baseline-minutes 3]

Without --local-dir it writes a stand-in in the real release's format first (bench/prepare.py's
generator: ratings.csv `userId,movieId,rating,timestamp` with 32,000,000 ratings of 200,948 users on
87,585 movies, heavy-tailed activity and popularity; movies.csv with made-up titles and genres), so
the files, their reading and every size are the real ones; the quality figures of a stand-in mean
nothing. Each stage runs as its own `semrec` process through the command line; its wall time and
peak memory (that process's ru_maxrss, from wait4) are measured.

The retriever is the ml-32m preset's (the small decoder-only model of the Amazon presets at a
history cap of 200 items, 64 windows a step), trained for --retriever-minutes only: enough to
measure its throughput; SASRec (the preset's sampled softmax: a full one over 87,585 items does not
fit in memory) likewise for --baseline-minutes. The cost model then says what a retriever epoch costs:
- measured: training tokens per epoch (every item of every training window, times tokens per item,
  counted from the prepared sequences), tokens per second on this machine, peak memory;
- projected: seconds per epoch here (tokens / measured rate), and on 1 / 8 / 64 GPUs from the FLOPs
  per token (counted from the model's shape) at an assumed sustained GPU throughput (--gpu-tflops,
  printed with the table). No GPU was measured: the GPU rows are arithmetic, not observations.
`semrec eval` ranks every one of the 200,948 users by beam search, hours on a CPU: its time is
projected from the users per second of the validation decoding inside fit-retriever, and its peak
memory measured by running it for --eval-minutes (its batches all have one size), and SASRec's
ranking of the same users likewise, in a process of its own.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overrides import parse_pair, with_settings  # noqa: E402
from prepare import ML32M_USERS, generate_ml32m  # noqa: E402

RETRIEVER = {"retriever.eval_every": "100000"}  # the preset's retriever, validated once, at the end


def stage(root: Path, *args: str, limit: float | None = None) -> dict:
    """One `semrec` command in its own process: its JSON figures, wall seconds, peak memory (GiB), and
    the load average (1 minute) when it started. With `limit` (seconds) it is stopped then, if still
    running: the peak of its first minutes, for a command whose batches all have one size."""
    return measured([sys.executable, "-m", "semrec", "--project", str(root), *args, "--json"], limit)


def measured(command: list[str], limit: float | None = None) -> dict:
    load = os.getloadavg()[0]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    stopped = threading.Timer(limit, child.terminate) if limit else None
    if stopped:
        stopped.start()
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if stopped:
        stopped.cancel()
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and not (limit and seconds >= limit):
        raise SystemExit(f"`{' '.join(command[1:])}` failed with exit {code}")
    return {"figures": json.loads(out) if out.strip() and code == 0 else {}, "seconds": round(seconds, 1),
            "peak_gib": round(usage.ru_maxrss / 2**20, 2), "load": round(load, 2), "stopped": code != 0}


def rank_with_sasrec(root: Path, seconds: float) -> None:
    """SASRec's ranking of the test users as `semrec eval` does it (batches of eval.batch_size x 4), for at
    most `seconds`; prints users ranked and users per second as JSON (run in its own process)."""
    import torch

    from semrec.baselines.fit import load_sasrec, read_baseline_sequences
    from semrec.baselines.sasrec import rank_items
    from semrec.project import load_project
    from semrec.report import Reporter
    from semrec.workspace import Workspace

    ws = Workspace(load_project(explicit=root), Reporter())
    model, _ = load_sasrec(ws, torch.device("cpu"))
    histories, _ = read_baseline_sequences(ws, model.cfg.max_seq_len).split_items("test")
    size, done, started = ws.settings.eval.batch_size * 4, 0, time.perf_counter()
    while done < len(histories) and time.perf_counter() - started < seconds:
        rank_items(model, histories[done:done + size], 10, size)
        done = min(done + size, len(histories))
    spent = time.perf_counter() - started
    print(json.dumps({"users": len(histories), "ranked": done, "users_per_s": round(done / spent, 1)}))


def configure(root: Path, local_dir: Path, pairs: dict[str, str]) -> None:
    from semrec.project import load_project, render_toml

    project = load_project(explicit=root)
    values = {"data.local_dir": str(local_dir), **dict(parse_pair(f"{key}={value}") for key, value in pairs.items())}
    project.path.write_text(render_toml(with_settings(project.settings, values)))


def training_tokens(root: Path) -> dict:
    """Training windows, target items and tokens of one epoch of fit-retriever, from the prepared data."""
    from semrec.project import load_project
    from semrec.retriever.data import read_sequences
    import torch

    from semrec.report import Reporter
    from semrec.workspace import Workspace

    ws = Workspace(load_project(explicit=root), Reporter())
    s = ws.settings.retriever
    sequences = read_sequences(ws.path("data/splits.parquet"), ws.path("data/interactions.parquet"), 0,
                               s.max_seq_len, s.training)
    per_item = json.loads(ws.path("retriever/config.json").read_text())["model"]["levels"] + 1  # and the collision token
    items = int(sequences.window_lengths(torch.arange(len(sequences))).sum())
    return {"windows": len(sequences), "targets": sequences.n_targets, "items": items, "tokens_per_item": per_item,
            "tokens": items * per_item}


def config_valid_users(root: Path) -> int:
    return json.loads((root / "retriever/config.json").read_text())["settings"]["valid_users"]


def flops_per_token(cfg: dict, window_tokens: float) -> float:
    """Training FLOPs per token of the decoder-only model: 6 x the weights each token passes through
    (blocks and the output layer over the codebook), plus attention's 12 x layers x d x context."""
    d, layers, ff = cfg["d_model"], cfg["decoder_layers"], cfg["ff_dim"]
    inner = cfg["heads"] * cfg["head_dim"]
    per_layer = 4 * d * inner + 2 * d * ff
    output = d * cfg["codebook_size"]
    return 6 * (layers * per_layer + output) + 12 * layers * inner * window_tokens / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the workspace folder to create")
    parser.add_argument("--local-dir", type=Path, help="the real ml-32m files (default: write the stand-in)")
    parser.add_argument("--rows", type=int, default=32_000_000, help="ratings of the stand-in")
    parser.add_argument("--tokenizer-minutes", type=float, default=5.0)
    parser.add_argument("--retriever-minutes", type=float, default=5.0)
    parser.add_argument("--baseline-minutes", type=float, default=3.0, help="SASRec's bound (sampled softmax)")
    parser.add_argument("--eval-minutes", type=float, default=5.0,
                        help="run each part of `semrec eval` this long for its peak memory (the whole takes hours)")
    parser.add_argument("--rank-sasrec", type=float, metavar="SECONDS", help=argparse.SUPPRESS)
    parser.add_argument("--gpu-tflops", type=float, default=10.0,
                        help="assumed sustained training throughput of one GPU, TFLOP/s, for the projection (default: "
                             "1%% of an H100's dense bf16 peak; a model this small is bound by kernel launches and "
                             "memory traffic, far from the peak)")
    args = parser.parse_args()
    if args.rank_sasrec is not None:
        return rank_with_sasrec(args.root, args.rank_sasrec)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows: list[tuple[str, dict]] = []
    local_dir = args.local_dir
    if local_dir is None:
        local_dir = args.root.with_name(args.root.name + "-raw")
        local_dir.mkdir(parents=True, exist_ok=True)
        if not (local_dir / "ratings.csv").exists():
            started = time.perf_counter()
            generate_ml32m(local_dir, args.rows)
            print(f"stand-in written to {local_dir} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "semrec", "init", "ml-32m", str(args.root), "--force"], check=True)
    configure(args.root, local_dir.resolve(), {
        **RETRIEVER, "tokenizer.train.max_minutes": str(args.tokenizer_minutes),
        "retriever.train.max_minutes": str(args.retriever_minutes),
        "baselines.sasrec.train.max_minutes": str(args.baseline_minutes),
    })
    for name in ("download", "embed", "fit-tokenizer", "tokenize", "fit-retriever", "fit-baseline"):
        rows.append((name, stage(args.root, name)))
        print(f"{name}: {rows[-1][1]['seconds']} s, {rows[-1][1]['peak_gib']} GiB", file=sys.stderr)
    user = subprocess.run([sys.executable, "-c", "import polars as pl, sys; print(pl.read_parquet(sys.argv[1], "
                           "columns=['user_key']).row(0)[0])", str(args.root / "data/interactions.parquet")],
                          capture_output=True, text=True, check=True).stdout.strip()
    rows.append(("recommend (one user)", stage(args.root, "recommend", "--user", user, "--k", "10")))
    limit = args.eval_minutes * 60
    rows.append((f"eval, the retriever's beam search (stopped at {args.eval_minutes:g} min)",
                 stage(args.root, "eval", "--baselines", "popularity", limit=limit)))
    rows.append((f"eval, SASRec's ranking ({args.eval_minutes:g} min at most)", measured(
        [sys.executable, __file__, "--root", str(args.root), "--rank-sasrec", str(limit)], limit + 120)))

    epoch = training_tokens(args.root)
    retriever = dict(rows)["fit-retriever"]["figures"]
    config = json.loads((args.root / "retriever/config.json").read_text())["model"]
    history = json.loads((args.root / "retriever/metrics.json").read_text())
    window_tokens = epoch["tokens"] / epoch["windows"]
    flops = flops_per_token(config, window_tokens)
    cpu_epoch_s = epoch["tokens"] / retriever["tokens_per_s"]

    print(f"\nload average at start: {load}; this CPU: {os.cpu_count()} cores, torch threads as the CLI sets them")
    print("| stage | wall time | peak memory (GiB) | load at start | figures |")
    print("|---|---:|---:|---:|---|")
    keep = ("users", "items", "interactions", "encoded", "items_per_s", "collision_rate", "usage", "steps",
            "tokens_per_s", "targets_per_s", "valid_recall@10", "ranked", "users_per_s")
    for name, row in rows:
        shown = {k: v for k, v in row["figures"].items() if k in keep and not isinstance(v, dict | list)}
        print(f"| {name} | {row['seconds']} s | {row['peak_gib']} | {row['load']} | {json.dumps(shown)} |")
    print(f"\nOne epoch of fit-retriever: {epoch['windows']:,} windows, {epoch['targets']:,} target items, "
          f"{epoch['items']:,} window items x {epoch['tokens_per_item']} tokens = {epoch['tokens']:,} tokens "
          f"(measured); {flops / 1e6:.2f} MFLOP per token (counted, mean window {window_tokens:.0f} tokens)")
    print("| where | tokens/s | seconds per epoch | basis |")
    print("|---|---:|---:|---|")
    print(f"| this CPU | {retriever['tokens_per_s']:,} | {cpu_epoch_s:,.0f} ({cpu_epoch_s / 3600:.1f} h) | "
          f"measured rate ({retriever['steps']} steps, {history['seconds']:.0f} s) |")
    for gpus in (1, 8, 64):
        rate = gpus * args.gpu_tflops * 1e12 / flops
        print(f"| {gpus} GPU{'s' if gpus > 1 else ''} | {rate:,.0f} | {epoch['tokens'] / rate:,.0f} | projected: "
              f"{args.gpu_tflops:g} TFLOP/s sustained per GPU, linear in GPUs |")
    validations = sum("valid_recall@10" in row for row in history["history"])
    decoded = validations * config_valid_users(args.root) / history["validation_seconds"]
    print(f"\n`semrec eval` decodes all {ML32M_USERS:,} users (beam 20): about {ML32M_USERS / decoded / 3600:.1f} h on this "
          f"CPU, projected from the validation decoding inside fit-retriever ({decoded:.1f} users/s, "
          f"{validations} validation(s), validation loss included); its peak memory is the eval rows'.")


if __name__ == "__main__":
    main()
