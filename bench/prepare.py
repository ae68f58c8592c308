"""Seconds and peak memory of the download stage's preparation, one child process per case.

Cases:
- beauty: Amazon Beauty from the local P5 files (../shared/datasets/amazon-beauty-2014).
- ml-32m: a generated ratings.csv in the MovieLens 32M format (userId,movieId,rating,timestamp;
  200,948 users with at least 20 ratings each, 87,585 movies with Zipf-like popularity), prepared
  with the default 5-core from data.local_dir.

Peak memory is the child's own ru_maxrss (it covers polars' native allocations, which
tracemalloc does not see). "seconds" times the stage (read, prepare, write); "CPU seconds" is the whole
child's user + system time (imports and the parquet writes included), which other load on the
machine does not inflate. Run: `python bench/prepare.py [--rows 32000000] [--threads 2]`.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEAUTY = REPO.parent / "shared" / "datasets" / "amazon-beauty-2014"
ML32M_USERS, ML32M_MOVIES = 200_948, 87_585
TITLE_WORDS = """night day love war city dark last first man woman girl boy story king queen dead life time house
road star blood heart secret game world return rise fall summer winter lost island river fire ice
dream ghost stranger family brother sister mother father street school party money power shadow
angel devil moon sun sea storm wild little big great hidden broken golden silent red black white"""


def generate_ml32m(folder: Path, rows: int, seed: int = 0) -> None:
    """ratings.csv and movies.csv shaped like ml-32m: sorted by user, heavy-tailed activity and popularity."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    users = min(ML32M_USERS, max(1, rows // 40))
    # activity: 20 each, the rest spread with a heavy (log-normal) tail
    weights = rng.lognormal(0.0, 1.2, users)
    extra = np.floor(weights / weights.sum() * max(0, rows - 20 * users)).astype(np.int64)
    counts = np.minimum(20, rows // users) + extra
    counts[: rows - counts.sum()] += 1
    popularity = 1.0 / np.arange(1, ML32M_MOVIES + 1) ** 0.9
    popularity /= popularity.sum()
    with open(folder / "ratings.csv", "w") as out:
        out.write("userId,movieId,rating,timestamp\n")
        for block in np.array_split(np.arange(users), 16):
            n = int(counts[block].sum())
            frame = pl.DataFrame({
                "userId": np.repeat(block + 1, counts[block]).astype(np.int32),
                "movieId": rng.choice(ML32M_MOVIES, size=n, p=popularity).astype(np.int32) + 1,
                "rating": rng.integers(1, 11, size=n) / 2,
                "timestamp": rng.integers(822_873_600, 1_697_000_000, size=n),
            })
            frame.write_csv(out, include_header=False)
    genres = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Drama", "Horror", "Romance", "Sci-Fi"]
    # titles of 1-4 words, so that the stand-in's item texts (and embeddings) differ as real ones do
    words = np.array(TITLE_WORDS.split())
    title_words = [" ".join(words[rng.choice(len(words), size=rng.integers(1, 5), replace=False)])
                   for _ in range(ML32M_MOVIES)]
    pl.DataFrame({
        "movieId": np.arange(1, ML32M_MOVIES + 1),
        "title": [f"{title.title()} ({1920 + i % 100})" for i, title in enumerate(title_words, start=1)],
        "genres": ["|".join(genres[j] for j in sorted({i % 10, (i * 7) % 10})) for i in range(1, ML32M_MOVIES + 1)],
    }).write_csv(folder / "movies.csv")


def run_case(case: str, local_dir: str) -> dict:
    """In the child: prepare one dataset into a temporary workspace, report time and own peak memory."""
    from semrec.data.prepare import run_download
    from semrec.project import Project, preset_settings
    from semrec.report import Reporter
    from semrec.workspace import Workspace

    preset = {"beauty": "beauty", "ml-32m": "ml-32m"}[case]
    settings = preset_settings(preset)
    settings.data.local_dir = local_dir
    if case == "beauty":
        settings.data.source_format = "p5"
    with tempfile.TemporaryDirectory() as root:
        workspace = Workspace(Project(Path(root) / "semrec.toml", settings), Reporter())
        started = time.perf_counter()
        figures = run_download(workspace, None)
        seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)  # ru_maxrss is in KiB on Linux
    return {"case": case, "seconds": round(seconds, 1), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_gib": round(usage.ru_maxrss / 2**20, 2),
            "users": figures["users"], "items": figures["items"], "interactions": figures["interactions"]}


def measure(case: str, local_dir: Path, threads: int) -> dict:
    env = dict(os.environ, POLARS_MAX_THREADS=str(threads), PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, __file__, "--child", case, str(local_dir)], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{case} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32_000_000, help="ratings in the generated ML-32M file")
    parser.add_argument("--threads", type=int, default=2, help="POLARS_MAX_THREADS of the children (cores)")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(*args.child)))
        return

    load = " ".join(f"{x:.1f}" for x in os.getloadavg())  # other work on the machine slows the wall clock
    results = []
    if BEAUTY.is_dir():
        results.append(measure("beauty", BEAUTY, args.threads))
    else:
        print(f"skipping beauty: {BEAUTY} is absent", file=sys.stderr)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        generate_ml32m(Path(folder), args.rows)
        size = (Path(folder) / "ratings.csv").stat().st_size
        print(f"generated {args.rows:,} ratings ({size / 2**20:.0f} MiB) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        results.append({**measure("ml-32m", Path(folder), args.threads), "case": f"ml-32m ({args.rows:,} ratings)"})

    print(f"load average before the runs: {load}; POLARS_MAX_THREADS={args.threads}")
    print("| case | seconds | CPU seconds (whole child) | peak memory (GiB) | users | items | interactions |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['case']} | {r['seconds']} | {r['cpu_seconds']} | {r['peak_gib']} | "
              f"{r['users']:,} | {r['items']:,} | {r['interactions']:,} |")


if __name__ == "__main__":
    main()
