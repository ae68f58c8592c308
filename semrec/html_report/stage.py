"""The report stage: `report/index.html`, built from whatever artifacts the workspace holds.

What it depends on, and why it stays correct without forcing training:

- Its `upstream` is only ("download",): the items and interactions every report starts from. So
  `semrec report` never trains anything; in a fresh project it downloads the data, no more.
- Every later artifact (embeddings, tags, tokenizer, semantic IDs, retriever, SASRec, eval) is in
  its `shows` list (see `semrec.pipeline`): read where it exists, a section left out where it does
  not. The workspace records the content digest of each shown artifact, or that it was absent, in
  the report's manifest entry, and calls the report stale as soon as one changes, appears or
  goes. So "rebuilt when its inputs change" holds for what it shows as much as for what it needs.
- An artifact whose own stage is stale is still shown (it is what is on disk); the page's header
  gives every stage's state, so a person sees which pictures predate the latest settings.
"""

import webbrowser
from pathlib import Path

from semrec.artifacts import REPORT
from semrec.html_report import charts, collect
from semrec.html_report.page import Chart, Section, esc, render_page, table
from semrec.io import atomic_write_text
from semrec.pipeline import STAGES


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _data(data: dict) -> Section:
    return Section("data", "Data", facts={
        "users": f"{data['users']:,}", "items": f"{data['items']:,}", "interactions": f"{data['interactions']:,}",
        "density": f"{data['density']:.2e}", "median history": f"{data['median_length']:g}",
        "interactions on the top 20% items": _pct(data["top_fifth_share"]),
    }, charts=[Chart(charts.sequence_lengths(data)), Chart(charts.popularity(data))])


def _embeddings(emb: dict) -> Section:
    return Section("embeddings", "Embeddings",
                   intro=f"{emb['items']:,} items in {emb['dim']} dimensions; a PCA projection of {emb['shown']:,} "
                         "sampled items, coloured by their first tag level.",
                   charts=[Chart(charts.projection(emb), wide=True)])


def _tags(tags: dict) -> Section:
    levels = len(tags["coverage"])
    return Section("tags", "Tags", intro=f"Tags from {esc(tags['source'])}.",
                   facts={f"level {i + 1} tags": f"{tags['distinct'][i]:,}" for i in range(levels)},
                   charts=[Chart(charts.tree(tags["tree"], "The tag tree (items per tag)")),
                           Chart(charts.per_level({"coverage": tags["coverage"]}, "Items with a real tag, per level",
                                                  "share of items"))])


def _tokenizer(tok: dict) -> Section:
    section = Section("tokenizer", f"Tokenizer ({tok.get('kind') or 'unknown kind'})")
    if "usage" in tok:
        section.facts = {"collision rate": _pct(tok["collision_rate"]), "largest collision group": str(tok["largest_group"]),
                         **{f"perplexity level {i + 1}": f"{p:.0f} / {tok['codebook']}" for i, p in enumerate(tok["perplexity"])}}
        per_level = {"codes used": tok["usage"], **({"NMI with tags": tok["nmi"]} if tok.get("nmi") else {})}
        section.charts += [Chart(charts.per_level(per_level, "Code usage and agreement with tags", "share / NMI")),
                           Chart(charts.code_usage(tok["code_counts"])),
                           Chart(charts.collision_groups(tok["groups"])),
                           Chart(charts.tree(tok["prefix_tree"], "Semantic-ID prefixes (click a code for the next level)"
                                             + (", coloured by their items' main tag" if "tag" in tok["prefix_tree"] else ""),
                                             tok["prefix_tree"].get("tag"), labelled=False, depth=1))]
    if tok["curves"]:
        positive = all(v > 0 for curve in tok["curves"].values() for v in curve["value"])
        section.charts.append(Chart(charts.curves({"tokenizer": tok["curves"]}, "Tokenizer training", list(tok["curves"]),
                                                  "loss", log=positive)))
    return section


def _retriever(ret: dict) -> Section:
    models = ret["models"]
    section = Section("retriever", "Retriever training")
    columns = ("params", "steps", "best_step", "tokens_per_s", "targets_per_s", "seconds")
    rows = [[name, *(str(m["figures"].get(k, "-")) for k in columns)] for name, m in models.items()]
    section.body = table(["model", "parameters", "steps", "best step", "tokens/s", "targets/s", "seconds"], rows)
    all_curves = {name: m["curves"] for name, m in models.items()}
    losses, validation = ["loss", "valid_loss"], ["valid_recall@10", "valid_ndcg@10"]
    retrievers = {name: m["curves"] for name, m in models.items() if name.startswith("retriever")}  # an ensemble's members too
    if any(set(losses) & set(found) for found in retrievers.values()):
        section.charts.append(Chart(charts.curves(retrievers, "Retriever loss", losses, "cross-entropy")))
    if any(set(validation) & set(found) for found in all_curves.values()):
        section.charts.append(Chart(charts.curves(all_curves, "Validation Recall@10 and NDCG@10", validation, "metric")))
    return section


def _evaluation(ev: dict) -> Section:
    metrics, best = ev["metrics"], ev["vs_best_baseline"]
    rows = [[name, *(f"{values[m]:.4f}" for m in metrics)] for name, values in ev["rows"].items()]
    classes = [""] * len(rows)
    if best:
        rows.append([f"retriever / {best['baseline']}", *("-" if best["ratio"][m] is None else f"{best['ratio'][m]:.2f}x"
                                                           for m in metrics)])
        classes.append("ratio")
    intro = f"{ev['split']} split, {ev['users']:,} users, ranked against the full catalogue."
    facts = {f"vs best baseline ({best['baseline']}, {best['by']})": f"{best['ratio'][best['by']]}x"} if best else {}
    shown = [Chart(charts.metric_bars(ev), wide=True)]
    if ev.get("by_history_length"):
        shown.append(Chart(charts.by_history_length(ev["by_history_length"]), wide=True))
    return Section("evaluation", "Evaluation", intro=intro, facts=facts, body=table(["model", *metrics], rows, row_classes=classes),
                   charts=shown)


def _item_list(rows: list[dict], with_id: bool) -> str:
    items = []
    for row in rows:
        extra = f" <code>{esc('-'.join(map(str, row['semantic_id'])))}</code>" if with_id else ""
        items.append(f"<li>{esc(row['title'] or '(untitled)')}{extra}<br><span class=\"tags\">"
                     f"{esc(' > '.join(row['tags']))}</span></li>")
    return "<ol>" + "".join(items) + "</ol>"


def _users(users: dict) -> Section:
    if users.get("error"):
        return Section("users", "Users and their recommendations",
                       body=f'<p class="note">No recommendations: {esc(users["error"])}</p>')
    body = "".join(
        f'<div class="user"><h3>user {esc(u["user"])} ({u["length"]} items)</h3>'
        f"<div><h4>latest history</h4>{_item_list(u['history'], False)}</div>"
        f"<div><h4>recommended next</h4>{_item_list(u['recommended'], True)}</div></div>"
        for u in users["users"])
    return Section("users", "Users and their recommendations",
                   intro="A few users' latest items beside what <code>semrec recommend --user</code> answers.", body=body)


def build_sections(ws) -> list[Section]:
    """Every section the workspace's artifacts allow, in pipeline order."""
    seed = ws.settings.project.seed
    items, interactions = collect.read_tables(ws)
    tagging = collect.item_tags(ws, items)
    titles = items["title"].fill_null("").to_list()
    found = [
        (_data, collect.data_section(items, interactions)),
        (_embeddings, collect.embeddings_section(ws, titles, tagging, seed)),
        (_tags, collect.tags_section(tagging)),
        (_tokenizer, collect.tokenizer_section(ws, tagging)),
        (_retriever, collect.retriever_section(ws)),
        (_evaluation, collect.evaluation_section(ws)),
        (_users, collect.users_section(ws, items, interactions, tagging, seed)),
    ]
    return [make(figures) for make, figures in found if figures is not None]


def run_report(ws, run) -> dict:
    """Write report/index.html from what the workspace holds."""
    sections = build_sections(ws)
    stages = [(name, (s := ws.state(name)).state, s.reason) for name in STAGES if name != "report"]
    html = render_page(f"semrec report: {ws.settings.project.name}", stages, sections)
    path = ws.path(REPORT)
    atomic_write_text(path, html)
    ws.reporter.info(f"wrote {path} ({len(html.encode()) / 2**20:.1f} MiB)")
    return {"path": str(path), "sections": [s.key for s in sections], "charts": sum(len(s.charts) for s in sections),
            "bytes": len(html.encode()), "scatter_points": collect.SCATTER_POINTS}


def open_report(path: Path) -> None:
    webbrowser.open(path.resolve().as_uri())
