"""`semrec report`: the offline HTML page, its stage's inputs, and the page opened in headless Chromium.

The workspace is a tiny demo with the synthetic tokenizer of test_evaluate (IDs from category
paths), a tiny retriever, a tiny SASRec and an evaluation, so every section has something to draw.
The browser test needs Debian's `chromium` (`.ci/run` installs it) and skips, saying so, without it.
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import copied_workspace, fake_encode, workspace_at
from semrec.artifacts import EVAL_METRICS, TOKENIZER
from semrec.cli import app
from semrec.html_report.page import DRAWN_MARK
from semrec.io import atomic_write_json
from semrec.pipeline import STAGES
from semrec.project import render_toml
from semrec.workspace import Workspace
from test_evaluate import TINY, fake_fit_tokenizer, use_synthetic_tokenizer
from test_sasrec import SMALL

ALL_SECTIONS = ["data", "embeddings", "tags", "tokenizer", "retriever", "evaluation", "users"]
SCREENSHOTS = os.environ.get("SEMREC_SCREENSHOTS")  # where the browser test keeps its screenshot (default: tmp_path)


def fit_tokenizer_with_curve(ws, run) -> dict:
    """The synthetic tokenizer, plus a training curve for the report to draw."""
    fake_fit_tokenizer(ws, run)
    history = [{"step": s, "loss": 1 / s, "recon": 0.8 / s, "vq": 0.2 / s, "lr": 1e-3} for s in range(10, 110, 10)]
    atomic_write_json(ws.path(TOKENIZER) / "metrics.json", {"kind": "synthetic", "history": history})
    return {"kind": "synthetic", "usage": [1.0, 1.0, 1.0]}


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory) -> Path:
    """A demo workspace where every stage but tag has run (tags.parquet is written by the synthetic tokenizer)."""
    from semrec import embed

    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEMREC_CACHE_DIR", str(root / "cache"))
        patch.setattr(embed, "encode_texts", fake_encode)
        patch.setattr(embed, "load_model", lambda settings: None)
        use_synthetic_tokenizer(patch)
        with_curve = dataclasses.replace(STAGES["fit-tokenizer"], run=f"{__name__}:fit_tokenizer_with_curve")
        patch.setitem(STAGES, "fit-tokenizer", with_curve)
        ws = workspace_at(root / "ws", "demo", **{**TINY, **SMALL, "eval.baselines": ["popularity", "sasrec"]})
        ws.project.path.write_text(render_toml(ws.settings))
        ws.ensure("embed")
        ws.ensure("eval")
    return root / "ws"


@pytest.fixture
def trained(trained_once, tmp_path, monkeypatch) -> Workspace:
    """A copy of the trained workspace, the synthetic tokenizer stages in place."""
    use_synthetic_tokenizer(monkeypatch)
    return copied_workspace(trained_once, tmp_path / "ws")


def report(ws, *args: str):
    result = CliRunner().invoke(app, ["--project", str(ws.root), "report", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- the page -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_report_has_every_section_and_needs_nothing_online(trained):
    result = report(trained)
    page = Path(result["path"]).read_text()
    assert result["sections"] == ALL_SECTIONS
    assert all(f'id="{name}"' in page for name in ALL_SECTIONS)
    head, body = page.split("</head>", 1)
    assert head.count("<script>") == 1 and "window.Plotly = Plotly" in head  # plotly.js inlined, in the head
    assert "window.Plotly = Plotly" not in body  # and only there
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|https?://", body)  # nothing fetched
    assert body.count('class="chart-spec"') == result["charts"]  # every chart's figure, drawn by one script
    assert body.count("Plotly.newPlot(") == 1
    assert "sasrec" in page and "retriever / " in page  # every baseline and the ratio to the best one


def test_a_label_with_a_closing_script_tag_stays_inside_its_figure():
    import plotly.graph_objects as go

    from semrec.html_report.page import Chart, Section, render_page

    title = "Lipstick </script><script>alert(1)</script>"
    figure = go.Figure(go.Bar(x=[title], y=[1]), layout={"title": title, "height": 300})
    page = render_page("t", [], [Section("data", "Data", charts=[Chart(figure)])])
    body = page.split("</head>", 1)[1]
    assert body.count("<script") == body.count("</script>") == 2  # the figure's JSON and the drawing script
    spec = re.search(r'<script type="application/json" class="chart-spec" data-chart="data-chart-0">(.*?)</script>',
                     body).group(1)
    assert json.loads(spec)["layout"]["title"]["text"] == title


def test_report_shows_only_what_has_run(make_workspace):
    ws = make_workspace("demo", **{"data.demo_items": 200, "data.demo_users": 200})
    ws.project.path.write_text(render_toml(ws.settings))
    result = report(ws)
    assert result["sections"] == ["data", "tags"]  # the demo's category paths stand in for tags
    for later in ("fit-tokenizer", "fit-retriever", "eval"):
        assert ws.state(later).state == "missing"  # the report never trains


@pytest.mark.slow
def test_report_is_rebuilt_when_an_artifact_it_shows_changes(trained):
    report(trained)
    assert trained.state("report").state == "done"
    assert report(trained)["path"]  # up to date: skipped
    metrics = json.loads(trained.path(EVAL_METRICS).read_text())
    metrics["metrics"]["ndcg@10"] = 0.5
    trained.path(EVAL_METRICS).write_text(json.dumps(metrics))
    state = trained.state("report")
    assert (state.state, state.reason) == ("stale", "an artifact it shows changed")
    assert "0.5000" in Path(report(trained)["path"]).read_text()
    shutil.rmtree(trained.path("baselines/sasrec"))
    assert trained.state("report").state == "stale"


@pytest.mark.slow
def test_status_shows_the_key_figures(trained):
    result = CliRunner().invoke(app, ["--project", str(trained.root), "status", "--json"])
    assert result.exit_code == 0, result.output
    key = json.loads(result.stdout)["key_figures"]
    assert set(key) == {"data", "tokenizer", "retriever", "eval"}
    assert set(key["eval"]["models"]) == {"retriever", "popularity", "sasrec"}
    table = CliRunner().invoke(app, ["--project", str(trained.root), "status"])
    assert table.exit_code == 0 and "retriever / " in table.stdout


# -- in a real browser --------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PROBE = """<script>
window.__errors = [];
addEventListener("error", e => __errors.push(String(e.message)));
addEventListener("unhandledrejection", e => __errors.push(String(e.reason)));
const __error = console.error; console.error = (...a) => { __errors.push(a.join(" ")); __error(...a); };
addEventListener("load", () => { document.body.dataset.shownMs = Math.round(performance.now()); });
document.addEventListener("semrec:charts-drawn", () => {
  document.body.dataset.renderedMs = Math.round(performance.now());
  document.body.dataset.errors = JSON.stringify(__errors);
});
</script>"""
"""Put first in <head> of a copy of the page: records errors, the time until the page shows (text and
tables, at the load event) and the time until its last chart is drawn."""

CHART = re.compile(r'<div id="([\w-]+)" class="plotly-graph-div')
SECTION = re.compile(r'<section id="(\w+)"')


def drawn_marks(dom: str) -> dict[str, int]:
    """Per plotly chart of a rendered DOM: how many SVG marks it drew (up to the next chart)."""
    starts = list(CHART.finditer(dom))
    ends = [m.start() for m in starts[1:]] + [len(dom)]
    return {m.group(1): len(DRAWN_MARK.findall(dom, m.end(), end)) for m, end in zip(starts, ends)}


def open_in_chromium(page: Path, screenshot: Path, tmp_path: Path) -> dict:
    """Load the page (with the probe) headless: the rendered DOM's charts, errors, render time, a screenshot."""
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
             "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000"]
    dom = subprocess.run([*flags, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=300)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([*flags, "--window-size=1400,9000", f"--screenshot={screenshot}", page.as_uri()],
                   capture_output=True, text=True, timeout=300)
    body = dict(re.findall(r'data-([\w-]+)="([^"]*)"', re.search(r"<body[^>]*>", dom.stdout).group(0)))
    assert "rendered-ms" in body, f"the page never finished drawing its charts: {dom.stderr[-2000:]}"
    uncaught = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]
    errors = json.loads(body["errors"].replace("&quot;", '"')) + uncaught
    return {"marks": drawn_marks(dom.stdout), "sections": SECTION.findall(dom.stdout), "errors": errors,
            "shown_ms": int(body["shown-ms"]), "rendered_ms": int(body["rendered-ms"])}


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless browser test: Debian's `chromium` is not installed "
                    "(`.ci/run` installs it with apt-get; it could not be installed here)")
def test_the_report_draws_every_chart_in_headless_chromium(trained, tmp_path):
    result = report(trained)
    screenshot = Path(SCREENSHOTS or tmp_path) / "report-demo.png"
    seen = open_in_chromium(Path(result["path"]), screenshot, tmp_path)
    assert seen["errors"] == []
    assert seen["sections"] == ALL_SECTIONS
    assert len(seen["marks"]) == result["charts"]
    assert {chart: n for chart, n in seen["marks"].items() if n == 0} == {}  # every chart drew its marks
    assert screenshot.stat().st_size > 10_000
    print(f"shown in {seen['shown_ms']} ms, every chart drawn in {seen['rendered_ms']} ms; screenshot: {screenshot}")
