"""How long a `semrec report` page takes to draw in headless Chromium, against an empty page.

    python bench/report.py /tmp/beauty/report/index.html [--runs 5]

Each run starts a fresh headless Chromium on a copy of the page that writes a console line at the
load event (text and tables shown) and when the page announces its last chart drawn
(`semrec:charts-drawn`). Chromium stamps each console line with the wall clock, so the times are real
seconds from starting the browser (its virtual-time budget, which makes it exit once the page is
idle, speeds up the page's own clock and is not used for timing). The browser's own start-up is
measured on an empty page and on a page holding only plotly.js; the table subtracts the empty
page's. Run it on a quiet machine and note the load average.
"""

import argparse
import datetime
import os
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

from plotly.offline import get_plotlyjs

from semrec.html_report.page import DRAWN_MARK

CHROMIUM = "chromium"
STAMP = re.compile(r"\[\d+:\d+:(\d{4})/(\d{6}\.\d{6}):INFO:CONSOLE[^\]]*\] \"(semrec-[a-z-]+)\"")
PROBE = ('<script>addEventListener("load", () => console.log("semrec-load"));'
         'document.addEventListener("semrec:charts-drawn", () => console.log("semrec-charts-drawn"));</script>')


def open_page(page: Path, profile: Path) -> tuple[dict[str, float], str]:
    """Seconds from starting Chromium to each console mark of the page, and the rendered DOM."""
    started = datetime.datetime.now()
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=30000", "--dump-dom",
                           page.as_uri()], capture_output=True, text=True, timeout=300)
    marks = {}
    for day, clock, name in STAMP.findall(done.stderr):
        stamp = datetime.datetime.strptime(f"{started.year}{day}{clock}", "%Y%m%d%H%M%S.%f")
        marks[name] = (stamp - started).total_seconds()
    return marks, done.stdout


def probed(page: Path, folder: Path, name: str) -> Path:
    copy = folder / name
    copy.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        empty = folder / "empty.html"
        empty.write_text(f"<!DOCTYPE html><html><head>{PROBE}</head><body>empty</body></html>")
        plotly_only = folder / "plotly.html"
        plotly_only.write_text(f"<!DOCTYPE html><html><head>{PROBE}<script>{get_plotlyjs()}</script></head>"
                               "<body>plotly.js</body></html>")
        report = probed(args.page, folder, "report.html")
        times = {"empty page, load": [], "plotly.js only, load": [], "report, load (text and tables shown)": [],
                 "report, last chart drawn": []}
        marks = 0
        open_page(empty, folder / "profile")  # the first start fills the profile: not timed
        for _ in range(args.runs):
            times["empty page, load"].append(open_page(empty, folder / "profile")[0]["semrec-load"])
            times["plotly.js only, load"].append(open_page(plotly_only, folder / "profile")[0]["semrec-load"])
            seen, dom = open_page(report, folder / "profile")
            if "semrec-charts-drawn" not in seen:
                raise SystemExit("the report never finished drawing its charts")
            times["report, load (text and tables shown)"].append(seen["semrec-load"])
            times["report, last chart drawn"].append(seen["semrec-charts-drawn"])
            marks = len(DRAWN_MARK.findall(dom))
    base = statistics.median(times["empty page, load"])
    print(f"{args.page} ({args.page.stat().st_size / 2**20:.2f} MiB, {marks:,} SVG marks drawn); "
          f"seconds from starting Chromium, median of {args.runs} runs; load average at start {load}")
    print("| page, moment | median s | min | max | less the empty page, s |")
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} | "
              f"{statistics.median(values) - base:.2f} |")

if __name__ == "__main__":
    main()
