"""The retriever beside its baselines on one workspace: train what is missing, evaluate, print the table.

    python bench/baselines.py --project /tmp/beauty [--sasrec-minutes 20] [--set baselines.sasrec.lr=0.002 ...]

Runs `fit-baseline` (SASRec) and `eval --baselines popularity,sasrec` through the stage runner (so
nothing that is up to date runs again), then prints one row per model: Recall/NDCG at every cut-off,
training minutes, and users ranked per second. Note the machine's load beside the figures.
"""

import argparse
import dataclasses
import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from semrec.project import load_project
from semrec.rich_report import RichReporter
from semrec.workspace import Workspace

from overrides import parse_pair, with_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--sasrec-minutes", type=float, help="bound SASRec's training (baselines.sasrec.train.max_minutes)")
    parser.add_argument("--set", action="append", default=[], help="a setting for this run, KEY=VALUE")
    args = parser.parse_args()
    project = load_project(explicit=args.project)
    project = dataclasses.replace(project, settings=with_settings(project.settings, dict(map(parse_pair, args.set))))
    if args.sasrec_minutes is not None:
        project.settings.baselines.sasrec.train.max_minutes = args.sasrec_minutes
    project.settings.eval.baselines = ["popularity", "sasrec"]
    console = Console(stderr=True)
    ws = Workspace(project, RichReporter(console))
    load = os.getloadavg()
    sasrec = ws.ensure("fit-baseline")
    result = ws.ensure("eval")
    retriever = json.loads(ws.path("retriever/metrics.json").read_text())
    table = Table(title=f"{result['split']} split, {result['users']:,} users, full catalogue "
                        f"(load average at start {load[0]:.2f})")
    metrics = list(result["metrics"])
    for column in ["model", *metrics, "train min", "users/s"]:
        table.add_column(column, justify="left" if column == "model" else "right")
    table.add_row(result["model"]["name"], *(f"{result['metrics'][m]:.4f}" for m in metrics),
                  f"{retriever['seconds'] / 60:.1f}", f"{result['users_per_s']:,.0f}")
    for name, values in result["baselines"].items():
        info = result["baseline_models"][name]
        minutes = f"{sasrec['seconds'] / 60:.1f}" if name == "sasrec" else "-"
        speed = f"{info['users_per_s']:,.0f}" if "users_per_s" in info else "-"
        table.add_row(name, *(f"{values[m]:.4f}" for m in metrics), minutes, speed)
    Console().print(table)
    print(json.dumps({"eval": result, "sasrec": sasrec, "load_average": load}, indent=2))


if __name__ == "__main__":
    main()
