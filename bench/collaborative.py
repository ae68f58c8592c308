"""How well a history predicts the next item's first code, for semantic IDs of text alone and of text plus
SASRec item embeddings (`tokenizer.collaborative_weight`), on the training and validation splits only.

For each weight the project's tokenizer is fitted in a scratch folder beside links to the workspace's
data, embeddings and trained SASRec (`semrec fit-baseline` must have run there), and one row is printed:
fit seconds, collision rate, first-level perplexity, and two figures of how predictable the first code
is from the history's last item: the mutual information between consecutive items' first codes over
the training sequences, and the share of validation targets whose first code is among the 20 first
codes that most often follow the last history item's first code in training (a bigram stand-in for
the retriever's first beam step at beam 20, where the text-only IDs lose most targets).

    python bench/collaborative.py --project /tmp/beauty --weights 0 0.5 1 2 --scratch /tmp/collab
"""

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LINKED = ("data", "embeddings.safetensors", "tags.parquet", "baselines")


def first_codes(source: Path, scratch: Path, weight: float) -> tuple[torch.Tensor, dict]:
    """Each item's first code from a tokenizer fitted at `weight`, and the tokenize stage's figures."""
    import polars as pl

    from bench.overrides import with_settings
    from semrec.artifacts import SEMANTIC_IDS
    from semrec.project import load_project
    from semrec.report import Reporter
    from semrec.workspace import Workspace, upstream_order

    root = scratch / f"weight-{weight:g}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for artifact in LINKED:
        if (source / artifact).exists():
            (root / artifact).symlink_to(source / artifact)
    shutil.copy(source / "manifest.json", root / "manifest.json")  # the scratch records its own tokenizer
    project = load_project(explicit=source)
    settings = with_settings(project.settings, {"tokenizer.collaborative_weight": weight})
    ws = Workspace(type(project)(path=root / "semrec.toml", settings=settings), Reporter())
    for stage in upstream_order("fit-tokenizer", settings):  # a stage run here would write through the links
        if ws.state(stage).state != "done":
            raise SystemExit(f"{stage} is not done in {source}: run `semrec {stage}` there first")
    started = time.perf_counter()
    figures = ws.ensure("tokenize")
    figures["fit_seconds"] = time.perf_counter() - started
    ids = pl.read_parquet(ws.path(SEMANTIC_IDS)).sort("item")
    return torch.from_numpy(ids["code_1"].to_numpy().astype("int64")), figures


def predictability(codes: torch.Tensor, source: Path, beam: int = 20) -> dict:
    """Mutual information (nats) of consecutive training items' first codes; the share of validation targets
    whose first code is among the `beam` most frequent successors of the last history item's first code."""
    from semrec.artifacts import INTERACTIONS, SPLITS
    from semrec.retriever.data import read_sequences

    sequences = read_sequences(source / SPLITS, source / INTERACTIONS, 0, 1)
    ends = sequences.lengths.cumsum(0)
    same_user = torch.ones(len(sequences.flat) - 1, dtype=torch.bool)
    same_user[ends[:-1] - 1] = False  # no pair across two users
    before, after = codes[sequences.flat[:-1][same_user]], codes[sequences.flat[1:][same_user]]
    size = int(codes.max()) + 1
    joint = torch.zeros(size, size).index_put_((before, after), torch.ones(len(before)), accumulate=True)
    p = joint / joint.sum()
    outer = p.sum(1, keepdim=True) * p.sum(0, keepdim=True)
    mutual = float((p[p > 0] * (p[p > 0] / outer[p > 0]).log()).sum())
    last = codes[sequences.flat[ends - 1]]
    top = joint.topk(min(beam, size), dim=1).indices[last]  # (U, beam)
    in_beam = (top == codes[sequences.valid][:, None]).any(1).float().mean()
    return {"mutual_information": mutual, "valid_first_code_in_top": float(in_beam)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, required=True, help="a workspace where fit-baseline has run")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    parser.add_argument("--scratch", type=Path, required=True)
    args = parser.parse_args()
    source = args.project.resolve()
    print("| collaborative_weight | fit + tokenize s | collisions | first-level perplexity "
          "| MI of consecutive first codes (nats) | valid first code in the bigram top 20 |")
    print("|---:|---:|---:|---:|---:|---:|")
    for weight in args.weights:
        codes, figures = first_codes(source, args.scratch.resolve(), weight)
        found = predictability(codes, source)
        print(f"| {weight:g} | {figures['fit_seconds']:.0f} | {figures['collision_rate']:.2%} | "
              f"{figures['perplexity'][0]:.1f} | {found['mutual_information']:.3f} | "
              f"{found['valid_first_code_in_top']:.1%} |", flush=True)


if __name__ == "__main__":
    main()
