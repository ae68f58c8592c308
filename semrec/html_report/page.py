"""The report as one HTML file that works offline: plotly.js inlined once in the head, every chart an
empty div beside its figure as JSON, tables and styles inline. Nothing is fetched at view time.

Charts are drawn by one script at the end of the page, after the text and tables show: each chart in
document order, one at a time, yielding to the browser between them (and a chart scrolled into view
first), so the page is readable at once however many charts it has. When the last chart is drawn, the
body's `data-charts-drawn-ms` says when (milliseconds since the page was opened) and the document
gets the event `semrec:charts-drawn` (the browser test and bench/report.py wait for them).
"""

import html
import json
import re
from dataclasses import dataclass, field

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

CONFIG = {"displaylogo": False, "responsive": True}

DRAWN_MARK = re.compile(r'class="(?:point|js-line|slice)[ "]')
"""One mark plotly drew into a chart's SVG (a marker or bar, a line, a sunburst slice): how a reader of
the rendered page (the browser test, bench/report.py) counts what was drawn."""

DRAW_CHARTS = """(() => {
  const pending = new Map([...document.querySelectorAll("script.chart-spec")].map(s => [s.dataset.chart, s]));
  const total = pending.size;
  let drawn = 0;
  const done = () => {
    document.body.dataset.chartsDrawnMs = Math.round(performance.now());
    document.dispatchEvent(new CustomEvent("semrec:charts-drawn", {detail: {charts: total}}));
  };
  const draw = id => {
    const spec = pending.get(id);
    if (!spec) return Promise.resolve();
    pending.delete(id);
    const figure = JSON.parse(spec.textContent);
    return Plotly.newPlot(id, figure.data, figure.layout, CONFIG).then(() => { if (++drawn === total) done(); });
  };
  const inView = new IntersectionObserver(entries => entries.forEach(entry => {
    if (entry.isIntersecting) { inView.unobserve(entry.target); draw(entry.target.id); }
  }), {rootMargin: "200px"});
  pending.forEach((_, id) => inView.observe(document.getElementById(id)));
  const next = () => {
    const id = pending.keys().next().value;
    if (id !== undefined) draw(id).then(() => setTimeout(next, 0));
  };
  if (total === 0) done(); else setTimeout(next, 0);
})();"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em 2em; color: #222; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 2px solid #4c78a8; padding-bottom: .2em; margin-top: 2em; }
.stages span { display: inline-block; margin: .2em .4em .2em 0; padding: .15em .6em; border-radius: 1em;
  font-size: .85em; background: #eee; }
.stages .done { background: #d7efd2; } .stages .stale { background: #fbe7b5; } .stages .missing { background: #f4c7c3; }
dl.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: .4em 1em; }
dl.facts div { background: #f6f8fa; padding: .4em .6em; border-radius: 4px; }
dl.facts dt { font-size: .8em; color: #555; } dl.facts dd { margin: 0; font-weight: 600; font-size: 1.1em; }
/* fixed columns: a chart is drawn at its cell's width when its script runs, before later cells exist */
.charts { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 1em; }
@media (max-width: 1000px) { .charts { grid-template-columns: minmax(0, 1fr); } }
.chart.wide { grid-column: 1 / -1; }
table { border-collapse: collapse; margin: 1em 0; font-size: .9em; }
th, td { border-bottom: 1px solid #ddd; padding: .3em .7em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ratio td { color: #555; font-style: italic; }
.user { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; margin-bottom: 1.5em; }
.user h3 { grid-column: 1 / -1; margin-bottom: 0; }
.tags { color: #666; font-size: .85em; } .note { color: #8a5a00; }
"""


@dataclass
class Chart:
    figure: go.Figure
    wide: bool = False


@dataclass
class Section:
    """One part of the page: `key` is its element id, `facts` the key figures shown as tiles."""

    key: str
    title: str
    intro: str = ""
    facts: dict[str, str] = field(default_factory=dict)
    charts: list[Chart] = field(default_factory=list)
    body: str = ""  # further HTML (tables), already escaped


def esc(text) -> str:
    return html.escape(str(text))


def table(header: list[str], rows: list[list[str]], numeric_from: int = 1, row_classes: list[str] | None = None) -> str:
    """An HTML table of already-formatted cells; columns from `numeric_from` on are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for n, row in enumerate(rows):
        cells = "".join(f'<td class="num">{esc(c)}</td>' if i >= numeric_from else f"<td>{esc(c)}</td>"
                        for i, c in enumerate(row))
        cls = f' class="{row_classes[n]}"' if row_classes and row_classes[n] else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _chart(section: str, n: int, chart: Chart) -> str:
    """An empty div of the chart's height (so the page does not jump as charts draw) and its figure;
    `<\\/` keeps a `</script>` inside a label from ending the script element."""
    chart_id = f"{section}-chart-{n}"
    figure = chart.figure.to_json().replace("</", "<\\/")
    return (f'<div class="chart{" wide" if chart.wide else ""}" data-section="{section}">'
            f'<div id="{chart_id}" class="plotly-graph-div" style="height:{chart.figure.layout.height}px"></div>'
            f'<script type="application/json" class="chart-spec" data-chart="{chart_id}">{figure}</script></div>')


def _section(section: Section) -> str:
    facts = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in section.facts.items())
    charts = "".join(_chart(section.key, n, chart) for n, chart in enumerate(section.charts))
    return (f'<section id="{section.key}" class="report-section">'
            f"<h2>{esc(section.title)}</h2>"
            + (f"<p>{section.intro}</p>" if section.intro else "")
            + (f'<dl class="facts">{facts}</dl>' if facts else "")
            + (f'<div class="charts">{charts}</div>' if charts else "")
            + section.body + "</section>")


def render_page(title: str, stages: list[tuple[str, str, str]], sections: list[Section]) -> str:
    """The whole page: a header with each stage's state, then the sections in pipeline order."""
    badges = "".join(f'<span class="{esc(state)}" title="{esc(reason)}">{esc(name)}: {esc(state)}</span>'
                     for name, state, reason in stages)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{STYLE}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>"
        f"<h1>{esc(title)}</h1><div class=\"stages\">{badges}</div>"
        + "".join(_section(s) for s in sections)
        + f"<script>const CONFIG = {json.dumps(CONFIG)};\n{DRAW_CHARTS}</script></body></html>\n"
    )
