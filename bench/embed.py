"""Throughput of `semrec embed` and of the LLM tagger.

Embedding: items per second of the embedding model (default all-MiniLM-L6-v2) on the Amazon
Beauty item texts, exactly as `semrec embed` encodes them (`encode_texts`: length-sorted batches,
fp16 on a GPU), with the model load timed apart and one warm-up batch first.
Tagging: tags per second of `tag_with_llm` against a local OpenAI-compatible stub server that
answers at once (so the figure is semrec's own overhead: prompts, HTTP, parsing, the answer
cache), with concurrency 1 and 8, then a rerun served entirely from the answer cache;
`--stub-latency-ms` makes the stub wait like a real model, which is where concurrency pays.

    python bench/embed.py                       # CPU, every Beauty item (from ../shared/datasets)
    python bench/embed.py --items 2000          # a subset
    python bench/embed.py --device cuda         # a GPU
    python bench/embed.py --dump-texts t.json   # write the texts, for a machine without the data files
    python bench/embed.py --texts t.json        # read them back
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BEAUTY = REPO.parent / "shared" / "datasets" / "amazon-beauty-2014"


def beauty_texts(folder: Path) -> list[str]:
    """The Beauty item texts as the download stage prepares them (P5 ids + the RecBole .item file)."""
    from semrec.project import Project, preset_settings
    from semrec.artifacts import ITEMS
    from semrec.workspace import Workspace

    import polars as pl

    settings = preset_settings("beauty")
    settings.data.source_format, settings.data.local_dir, settings.data.offline = "p5", str(folder), True
    with tempfile.TemporaryDirectory() as root:
        ws = Workspace(Project(path=Path(root) / "semrec.toml", settings=settings))
        ws.ensure("download")
        return pl.read_parquet(ws.path(ITEMS))["text"].to_list()


def bench_embedding(texts: list[str], args) -> tuple[list[dict], object]:
    import torch

    from semrec.embed import encode_texts, load_model, resolve_device
    from semrec.settings import EmbedSettings

    settings = EmbedSettings(model=args.model, device=args.device, batch_size=args.batch_size, half_precision=not args.fp32)
    device = resolve_device(settings.device)
    started = time.perf_counter()
    load_model(settings)
    load_seconds = time.perf_counter() - started
    encode_texts(settings, texts[: settings.batch_size])  # warm-up: kernels, allocator, tokenizer caches
    started = time.perf_counter()
    vectors = encode_texts(settings, texts)
    seconds = time.perf_counter() - started
    precision = "fp16" if device.type == "cuda" and settings.half_precision else "fp32"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    rows = [
        {"measure": "load model", "setting": f"{args.model} on {name}", "items": 1, "seconds": load_seconds, "rate": None},
        {"measure": "embed items", "setting": f"{args.model} on {name}, {precision}, batch {settings.batch_size}, "
         f"dim {vectors.shape[1]}", "items": len(texts), "seconds": seconds, "rate": len(texts) / seconds},
    ]
    return rows, vectors


class _StubHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat-completions endpoint that answers at once with three tags from the item's words."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body, written apart, wait on a delayed ACK (~40 ms)
    latency_s = 0.0  # a model's thinking time, to see what concurrency buys

    def do_POST(self):  # noqa: N802 (http.server's naming)
        time.sleep(self.latency_s)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        words = body["messages"][1]["content"].splitlines()[0].removeprefix("Item: ").split()
        tags = [w.strip(",.").capitalize() or "General" for w in (words + ["general"] * 3)[:3]]
        reply = {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": json.dumps({"tags": tags})}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def bench_tagging(texts: list[str], vectors, args) -> list[dict]:
    from semrec.embed import CachedEncoder
    from semrec.report import Reporter
    from semrec.settings import EmbedSettings, LLMSettings
    from semrec.tags.llm import AnswerCache, ChatClient, LLMJob, tag_with_llm

    handler = type("Handler", (_StubHandler,), {"latency_s": args.stub_latency_ms / 1000})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    jobs = [LLMJob(i, f"item{i}", text, [None, None, None]) for i, text in enumerate(texts)]
    rows = []
    plans = [(1, 0, "fresh"), (8, 0, "fresh"), (8, 0, "cached")]
    if vectors is not None and args.candidates:
        plans.append((8, args.candidates, "fresh"))
    try:
        with tempfile.TemporaryDirectory() as folder:
            for concurrency, candidates, state in plans:
                # the "cached" rerun reads the answers the run before it wrote
                cache_path = Path(folder) / f"c{concurrency}-k{candidates}.jsonl"
                settings = LLMSettings(base_url=base_url, model="stub", concurrency=concurrency, candidates=candidates)
                encoder = CachedEncoder(EmbedSettings(model=args.model, device=args.device), Reporter()) if candidates else None
                started = time.perf_counter()
                outcome = tag_with_llm(
                    jobs, settings=settings, levels=3, cache=AnswerCache(cache_path), vocabulary=[set(), set(), set()],
                    item_vectors=vectors, encode=encoder.encode if encoder else None, reporter=Reporter(), client=ChatClient(settings),
                )
                seconds = time.perf_counter() - started
                assert len(outcome.answers) == len(jobs), outcome.failures
                rows.append({
                    "measure": "tag items (LLM stub)",
                    "setting": f"concurrency {concurrency}, {candidates} candidates/level, stub latency {args.stub_latency_ms:g} ms, "
                    + ("all answers cached" if state == "cached" else f"{outcome.sent} requests"),
                    "items": len(jobs), "seconds": seconds, "rate": len(jobs) / seconds,
                })
    finally:
        server.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--fp32", action="store_true", help="do not use fp16 on a GPU")
    parser.add_argument("--items", type=int, default=0, help="embed only the first N items (0 = all)")
    parser.add_argument("--llm-items", type=int, default=2000, help="items tagged against the stub server (0 = skip)")
    parser.add_argument("--candidates", type=int, default=0,
                        help="also tag with this many embedding-retrieved candidates per level (embeds every new tag text)")
    parser.add_argument("--stub-latency-ms", type=float, default=0.0, help="the stub server waits this long before each answer")
    parser.add_argument("--skip-embed", action="store_true")
    parser.add_argument("--texts", type=Path, help="read the item texts from this JSON list instead of the Beauty files")
    parser.add_argument("--dump-texts", type=Path, help="write the Beauty item texts to this JSON file and stop")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="semrec-bench-") as scratch:
        os.environ.setdefault("SEMREC_CACHE_DIR", scratch)  # never the user's cache: every run starts cold
        run_benchmarks(args)


def run_benchmarks(args) -> None:
    texts = json.loads(args.texts.read_text()) if args.texts else beauty_texts(BEAUTY)
    if args.dump_texts:
        args.dump_texts.write_text(json.dumps(texts))
        print(f"wrote {len(texts)} texts to {args.dump_texts}")
        return
    if args.items:
        texts = texts[: args.items]
    rows, vectors = [], None
    if not args.skip_embed:
        embed_rows, vectors = bench_embedding(texts, args)
        rows += embed_rows
    if args.llm_items:
        llm_texts = texts[: args.llm_items]
        rows += bench_tagging(llm_texts, vectors[: len(llm_texts)] if vectors is not None else None, args)
    print(f"\n{len(texts)} Beauty item texts (mean {sum(map(len, texts)) / len(texts):.0f} characters)\n")
    print("| measure | setting | items | seconds | per second |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        rate = f"{r['rate']:.1f}" if r["rate"] is not None else "-"
        print(f"| {r['measure']} | {r['setting']} | {r['items']} | {r['seconds']:.2f} | {rate} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
