"""The report as one HTML file that works offline: plotly.js inlined once in the head, every chart a
plotly div beside its own small script, tables and styles inline. Nothing is fetched at view time.
"""

import html
from dataclasses import dataclass, field

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

CONFIG = {"displaylogo": False, "responsive": True}

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
    div = chart.figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"{section}-chart-{n}", config=CONFIG)
    return f'<div class="chart{" wide" if chart.wide else ""}" data-section="{section}">{div}</div>'


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
        + "</body></html>\n"
    )
