"""Fitting the semantic-ID tokenizers on Amazon Beauty: wall time, training steps per second, and health.

For each kind (rqvae, hidvae, rqkmeans) with the project's default settings: the time to fit
(k-means initialisation and training included; the embeddings are an input, not timed), the
training steps per second, and the health of the resulting IDs over all 12,101 items:
collision rate, largest collision group, code usage and perplexity per level, NMI between each
level's codes and that level's category tag, reconstruction error, and (hidvae) tag accuracy.

    python bench/tokenizer.py                         # CPU; Beauty from ../shared/datasets
    python bench/tokenizer.py --device cuda           # the GPU
    python bench/tokenizer.py --kinds hidvae --steps 500
    python bench/tokenizer.py --dump DIR              # write the inputs (embeddings, tags, tag-text
                                                      # vectors) for a machine without the data or model
    python bench/tokenizer.py --inputs DIR            # read them back

The inputs come from a Beauty workspace built by the pipeline itself (download from the local
P5 files, embed with the default MiniLM model, tag from the category paths); the embeddings are
cached per machine, so only the first run embeds.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BEAUTY = REPO.parent / "shared" / "datasets" / "amazon-beauty-2014"


def beauty_settings():
    from semrec.project import preset_settings

    settings = preset_settings("beauty")
    settings.data.source_format, settings.data.local_dir, settings.data.offline = "p5", str(BEAUTY), True
    return settings


def workspace_inputs(root: Path):
    """Embeddings, tags, and a tag-text encoder from a Beauty workspace under `root` (built if needed)."""
    from semrec.embed import CachedEncoder, load_embeddings
    from semrec.project import Project
    from semrec.tokenizer.fit import load_tags
    from semrec.workspace import Workspace

    settings = beauty_settings()
    ws = Workspace(Project(path=root / "semrec.toml", settings=settings))
    ws.ensure("tag")
    embeddings, _ = load_embeddings(ws)
    tags = load_tags(ws, embeddings.shape[0])
    encoder = CachedEncoder(settings.embed)

    def encode_tag_texts(texts):
        vectors = encoder.encode(texts)
        encoder.save()
        return vectors

    return embeddings, tags, encode_tag_texts


def dump_inputs(folder: Path, embeddings, tags, encode_tag_texts) -> None:
    """Write what the benchmark reads, so that it runs where neither the data nor the model is."""
    from safetensors.torch import save_file

    from semrec.tokenizer.hidvae import tag_text, tag_vocabulary

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": embeddings.contiguous()}, str(folder / "embeddings.safetensors"))
    (folder / "tags.json").write_text(json.dumps(tags))  # JSON, so that reading needs no polars
    min_count = beauty_settings().tokenizer.hidvae.tag_min_count
    _, names = tag_vocabulary(tags, min_count)
    texts = sorted({tag_text(n) for level in names for n in level})
    vectors = encode_tag_texts(texts)
    save_file({"vectors": vectors.contiguous()}, str(folder / "tag_texts.safetensors"))
    (folder / "tag_texts.json").write_text(json.dumps(texts))


def dumped_inputs(folder: Path):
    import torch
    from safetensors.torch import load_file

    embeddings = load_file(str(folder / "embeddings.safetensors"))["embeddings"]
    tags = json.loads((folder / "tags.json").read_text())
    known = json.loads((folder / "tag_texts.json").read_text())
    vectors = load_file(str(folder / "tag_texts.safetensors"))["vectors"]
    index = {text: i for i, text in enumerate(known)}

    def encode_tag_texts(texts):
        return torch.stack([vectors[index[t]] for t in texts])

    return embeddings, tags, encode_tag_texts


def bench_kind(kind: str, embeddings, tags, encode_tag_texts, args) -> dict:
    import torch

    from semrec.tokenizer.fit import fit_tokenizer, tokenizer_metrics
    from semrec.device import resolve_device

    settings = beauty_settings()
    settings.tokenizer.kind = kind
    settings.tokenizer.device = args.device
    if args.steps:
        settings.tokenizer.train.steps = args.steps
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as checkpoints:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        tokenizer, summary = fit_tokenizer(
            settings, embeddings, tags, Path(checkpoints), "bench", resume=False, encode_tag_texts=encode_tag_texts
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    metrics = tokenizer_metrics(tokenizer, embeddings, tags)
    steps = summary["steps"]
    return {
        "kind": kind,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads",
        "steps": steps,
        "fit_seconds": round(seconds, 1),
        "steps_per_s": round(steps / seconds, 1) if steps else None,
        "collision_rate": round(metrics["collision_rate"], 4),
        "largest_collision_group": metrics["largest_collision_group"],
        "usage": [round(u, 3) for u in metrics["usage"]],
        "perplexity": [round(p, 1) for p in metrics["perplexity"]],
        "nmi": [round(v, 3) for v in metrics.get("nmi", [])],
        "reconstruction_error": round(metrics["reconstruction_error"], 4),
        "tag_accuracy": [round(a, 3) for a in metrics.get("tag_accuracy", [])],
    }


def print_table(rows: list[dict]) -> None:
    columns = [
        "kind", "device", "steps", "fit_seconds", "steps_per_s", "collision_rate", "largest_collision_group", "usage",
        "perplexity", "nmi", "reconstruction_error", "tag_accuracy",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join("-" if row.get(c) in (None, []) else str(row[c]) for c in columns) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto (default: cpu)")
    parser.add_argument("--kinds", default="rqvae,hidvae,rqkmeans", help="comma-separated tokenizer kinds")
    parser.add_argument("--steps", type=int, default=0, help="training steps (default: the project default)")
    parser.add_argument("--workspace", type=Path, default=None, help="Beauty workspace to build or reuse (default: a temporary one)")
    parser.add_argument("--inputs", type=Path, default=None, help="read the inputs written by --dump instead")
    parser.add_argument("--dump", type=Path, default=None, help="write the inputs to this folder and stop")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        if args.inputs is not None:
            embeddings, tags, encode_tag_texts = dumped_inputs(args.inputs)
        else:
            if not BEAUTY.is_dir():
                sys.exit(f"Beauty is not at {BEAUTY}; pass --inputs DIR (written elsewhere with --dump DIR)")
            root = args.workspace or Path(scratch)
            root.mkdir(parents=True, exist_ok=True)
            embeddings, tags, encode_tag_texts = workspace_inputs(root)
        if args.dump is not None:
            dump_inputs(args.dump, embeddings, tags, encode_tag_texts)
            print(f"wrote the inputs to {args.dump}")
            return
        rows = []
        for kind in args.kinds.split(","):
            rows.append(bench_kind(kind.strip(), embeddings, tags, encode_tag_texts, args))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        print_table(rows)
        if args.json is not None:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
