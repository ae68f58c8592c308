#!/usr/bin/env bash
# Train and evaluate the Beauty retriever on one GPU for each tokenizer's semantic IDs and each
# architecture, in turn, within a time budget; write each run's eval JSON and training curve to $OUT.
#
#   bench/gpu_beauty.sh WORKSPACE TOTAL_SECONDS [PER_RUN_SECONDS]
#
# WORKSPACE holds what the CPU computed: semrec.toml (optional; else the beauty preset), data/,
# semantic_ids.parquet and tokenizer/config.json (the first tokenizer, run first), and optionally
# ids/<name>/semantic_ids.parquet + ids/<name>/tokenizer/config.json for other tokenizers.
# Runs, in order: first tokenizer x encoder-decoder, first x decoder-only, then each other
# tokenizer x encoder-decoder, then each other x decoder-only. Each run gets PER_RUN_SECONDS
# (default: half the total) or what is left; a run starts only with at least 120 s left.
# Each run first times a few training steps and one validation, then sets the number of steps
# so that training, validation and the final test evaluation fit its time (cosine decay to the end).
#
# Environment (optional): DEVICE (cuda), BATCH (1024), LR (0.002), WARMUP (300), EVAL_EVERY (250),
# VALID_USERS (4096), DROPOUT (0.1), WEIGHT_DECAY (0.1), COMPILE (0: 1 = torch.compile).
# Python packages missing here (polars, tomli-w, platformdirs) may travel as wheels in .whl/.
set -euo pipefail
WS=$(cd "${1:?usage: bench/gpu_beauty.sh WORKSPACE TOTAL_SECONDS [PER_RUN_SECONDS]}" && pwd)
TOTAL=${2:?total seconds}
PER_RUN=${3:-0}
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/gpu-out}
mkdir -p "$OUT"
if [ -d "$REPO/.whl" ] && ! python3 -c "import polars" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$REPO"/.whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - "$WS" "$TOTAL" "$PER_RUN" "$OUT" <<'PY' 2>&1 | tee "$OUT/log.txt"
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from semrec.evaluate import run_eval
from semrec.project import Project, load_settings, preset_settings
from semrec.report import Reporter
from bench.retriever import _sync, bench_training
from semrec.device import autocast
from semrec.retriever.fit import run_fit_retriever
from semrec.artifacts import SEMANTIC_IDS, TOKENIZER
from semrec.workspace import StageRun, Workspace

source, total, per_run, out = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
deadline = time.monotonic() + total
per_run = per_run or total / 2
env = os.environ.get
device = torch.device(env("DEVICE", "cuda"))
machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"


class Log(Reporter):
    def info(self, message):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    warn = info


def id_sets() -> list[tuple[str, Path]]:
    """(name, folder holding semantic_ids.parquet and tokenizer/config.json): the workspace's own first."""
    sets = [(json.loads((source / TOKENIZER / "config.json").read_text()).get("kind", "ids"), source)]
    extra = source / "ids"
    if extra.is_dir():
        sets += [(p.name, p) for p in sorted(extra.iterdir()) if (p / SEMANTIC_IDS).exists()]
    return sets


def settings_for(arch: str):
    settings = load_settings(source / "semrec.toml") if (source / "semrec.toml").exists() else preset_settings("beauty")
    r = settings.retriever
    r.arch, r.device = arch, str(device)
    t = r.train
    t.batch_size, t.lr, t.warmup_steps = int(env("BATCH", 1024)), float(env("LR", 0.002)), int(env("WARMUP", 300))
    t.schedule, r.patience, t.checkpoint_every = "cosine", 0, 10**9
    r.eval_every, r.valid_users = int(env("EVAL_EVERY", 250)), int(env("VALID_USERS", 4096))
    r.dropout, t.weight_decay = float(env("DROPOUT", 0.1)), float(env("WEIGHT_DECAY", 0.1))
    r.compile = env("COMPILE", "0") == "1"
    settings.eval.batch_size = 1024 if device.type == "cuda" else 256
    settings.eval.split = "test"
    return settings


def workspace(name: str, ids: Path, arch: str) -> Workspace:
    root = Path("/tmp/semrec-gpu") / name
    shutil.rmtree(root, ignore_errors=True)
    (root / TOKENIZER).mkdir(parents=True)
    (root / "data").symlink_to(source / "data")
    shutil.copy(ids / SEMANTIC_IDS, root / SEMANTIC_IDS)
    shutil.copy(ids / TOKENIZER / "config.json", root / TOKENIZER / "config.json")
    return Workspace(Project(path=root / "semrec.toml", settings=settings_for(arch)), Log())


def probe(ws) -> tuple[float, float, int]:
    """Seconds per training step, seconds per validation, and the number of users (for the test evaluation)."""
    training = bench_training(ws, device, steps=20)
    task = training["task"]
    task.model.eval()
    started = time.perf_counter()
    with torch.no_grad(), autocast(device):
        task.validate()
    _sync(device)
    return training["seconds"] / 20, time.perf_counter() - started, task.batches.sequences.n_users


runs = [(name, ids, "encoder-decoder") for name, ids in id_sets()[:1]] + [(name, ids, "decoder-only") for name, ids in id_sets()[:1]]
runs += [(name, ids, "encoder-decoder") for name, ids in id_sets()[1:]] + [(name, ids, "decoder-only") for name, ids in id_sets()[1:]]
print(f"{machine}, torch {torch.__version__}; budget {total:.0f} s, {per_run:.0f} s per run; runs: "
      + ", ".join(f"{n}/{a}" for n, _, a in runs), flush=True)
summary = []
for name, ids, arch in runs:
    started = time.monotonic()
    budget = min(per_run, deadline - started)
    if budget < 120:
        print(f"skipping {name}/{arch}: {budget:.0f} s left", flush=True)
        continue
    label = f"{name}-{arch}"
    ws = workspace(label, ids, arch)
    step_s, valid_s, users = probe(ws)
    r = ws.settings.retriever
    test_s = valid_s * users / min(r.valid_users or users, users) + 15  # the test evaluation ranks every user
    fit_s = budget - (time.monotonic() - started) - test_s - 20  # 20 s: loading, saving, writing
    r.train.steps = max(r.train.warmup_steps + r.eval_every, int(fit_s / (step_s + valid_s / r.eval_every)))
    r.train.max_minutes = fit_s / 60
    print(f"{label}: {step_s * 1000:.1f} ms/step, {valid_s:.1f} s/validation -> {r.train.steps} steps in {fit_s:.0f} s", flush=True)
    figures = run_fit_retriever(ws, StageRun("fit-retriever", label, fresh=True, options={"resume": False}))
    result = run_eval(ws, StageRun("eval", label))
    curve = json.loads(ws.path("retriever/metrics.json").read_text())
    wall = time.monotonic() - started
    record = {"tokenizer": name, "arch": arch, "machine": machine, "torch": torch.__version__, "wall_seconds": round(wall, 1),
              "ms_per_step": round(step_s * 1000, 2), "fit": figures, "eval": result, "curve": curve,
              "retriever_settings": dataclasses.asdict(r)}
    (out / f"{label}.json").write_text(json.dumps(record, indent=1))
    m, p = result["metrics"], result["baselines"]["popularity"]
    summary.append(f"| {name} | {arch} | {figures['steps']} (best {figures['best_step']}) | {wall:.0f} s | {machine} | "
                   f"{m['recall@5']:.4f} | {m['ndcg@5']:.4f} | {m['recall@10']:.4f} | {m['ndcg@10']:.4f} | "
                   f"{p['recall@10']:.4f} |")
    print(summary[-1], flush=True)

header = ["| tokenizer | architecture | steps | wall time | machine | R@5 | N@5 | R@10 | N@10 | popularity R@10 |",
          "|---|---|---|---|---|---|---|---|---|---|"]
(out / "summary.md").write_text("\n".join(header + summary) + "\n")
print("\n".join(header + summary), flush=True)
PY
