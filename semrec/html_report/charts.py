"""The report's plotly figures, one function per chart, each from the plain figures of `collect`.

Plain SVG traces only (no WebGL), so that every chart draws the same in any browser, headless
ones included; the scatter is sampled in `collect` to keep that fast.
"""

import plotly.graph_objects as go

HEIGHT = 360
PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d",
           "#bab0ac", "#1f77b4", "#2ca02c", "#d62728"]


def _layout(fig: go.Figure, title: str, height: int = HEIGHT, **axes) -> go.Figure:
    fig.update_layout(title=title, height=height, template="plotly_white", margin=dict(l=60, r=20, t=50, b=50),
                      legend=dict(orientation="h", y=-0.2), **axes)
    return fig


def sequence_lengths(data: dict) -> go.Figure:
    fig = go.Figure(go.Bar(x=data["lengths"]["length"], y=data["lengths"]["users"], marker_color=PALETTE[0]))
    return _layout(fig, "Users by history length", xaxis_title="interactions per user", yaxis_title="users",
                   yaxis_type="log")


def popularity(data: dict) -> go.Figure:
    fig = go.Figure(go.Scatter(x=data["popularity"]["rank"], y=data["popularity"]["interactions"], mode="lines",
                               line_color=PALETTE[1]))
    return _layout(fig, "Item popularity (long tail)", xaxis_title="item rank", yaxis_title="interactions",
                   xaxis_type="log", yaxis_type="log")


def projection(emb: dict) -> go.Figure:
    fig = go.Figure()
    labels = emb["label"] or ["all items"] * len(emb["x"])
    order = sorted(set(labels), key=lambda name: (name == "other", -labels.count(name)))
    for colour, name in enumerate(order):
        rows = [i for i, label in enumerate(labels) if label == name]
        fig.add_trace(go.Scatter(
            x=[emb["x"][i] for i in rows], y=[emb["y"][i] for i in rows], mode="markers", name=name,
            text=[emb["title"][i] for i in rows], hoverinfo="text+name",
            marker=dict(size=4, opacity=0.6, color="#cccccc" if name == "other" else PALETTE[colour % len(PALETTE)]),
        ))
    pc1, pc2 = (f"{100 * share:.1f}%" for share in emb["explained"])
    return _layout(fig, f"Item embeddings, PCA ({emb['shown']} of {emb['items']} items sampled)", height=520,
                   xaxis_title=f"PC1 ({pc1} of variance)", yaxis_title=f"PC2 ({pc2})")


def tree(nodes: dict, title: str, colours: list[str] | None = None, labelled: bool = True, depth: int = 2) -> go.Figure:
    """A sunburst of `nodes` showing `depth` rings (a click on a slice opens the levels under it);
    `colours` names a colour group per node. Unlabelled slices (hover shows them) suit the semantic-ID
    tree: codes are no names, and text on hundreds of slices draws slowly."""
    trace = go.Sunburst(ids=nodes["ids"], labels=nodes["labels"], parents=nodes["parents"], values=nodes["values"],
                        branchvalues="total", maxdepth=depth, insidetextorientation="radial",
                        textinfo="label" if labelled else "none",
                        hovertemplate="%{label}<br>%{value} items<extra></extra>")
    if colours is not None:
        names = sorted(set(colours))
        trace.marker = dict(colors=[PALETTE[names.index(c) % len(PALETTE)] for c in colours])
        trace.customdata = colours
        trace.hovertemplate = "%{label}<br>%{value} items<br>mostly %{customdata}<extra></extra>"
    return _layout(go.Figure(trace), title, height=560)


def per_level(values: dict[str, list[float]], title: str, axis: str) -> go.Figure:
    """Grouped bars: one group per level, one bar per figure (coverage, usage, NMI …)."""
    fig = go.Figure()
    for colour, (name, series) in enumerate(values.items()):
        fig.add_trace(go.Bar(x=[f"level {i + 1}" for i in range(len(series))], y=series, name=name,
                             marker_color=PALETTE[colour], text=[f"{v:.2f}" for v in series], textposition="outside"))
    return _layout(fig, title, yaxis_title=axis, yaxis_range=[0, 1.1], barmode="group")


def code_usage(counts: list[list[int]]) -> go.Figure:
    fig = go.Figure()
    for level, series in enumerate(counts):
        fig.add_trace(go.Scatter(x=list(range(1, len(series) + 1)), y=series, mode="lines", name=f"level {level + 1}",
                                 line_color=PALETTE[level % len(PALETTE)]))
    return _layout(fig, "Items per code, codes sorted by use", xaxis_title="code rank", yaxis_title="items")


def collision_groups(groups: dict) -> go.Figure:
    fig = go.Figure(go.Bar(x=[str(s) for s in groups["size"]], y=groups["groups"], marker_color=PALETTE[3],
                           text=groups["groups"], textposition="outside"))
    return _layout(fig, "Code tuples by how many items share them", xaxis_title="items on one tuple",
                   yaxis_title="tuples", yaxis_type="log")


def curves(series: dict[str, dict[str, dict]], title: str, names: list[str], axis: str, log: bool = False) -> go.Figure:
    """Lines of `names` from each model's curves: {model: {figure: {"step", "value"}}}."""
    fig = go.Figure()
    colour = 0
    for model, model_curves in series.items():
        for name in names:
            if name in model_curves:
                curve = model_curves[name]
                label = name if len(series) == 1 else f"{model} {name}"
                fig.add_trace(go.Scatter(x=curve["step"], y=curve["value"], name=label,
                                         mode="lines+markers" if len(curve["step"]) < 30 else "lines",
                                         line_color=PALETTE[colour % len(PALETTE)]))
                colour += 1
    return _layout(fig, title, xaxis_title="step", yaxis_title=axis, yaxis_type="log" if log else "linear")


def metric_bars(evaluation: dict) -> go.Figure:
    """One group of bars per metric, one bar per model (one plot: subplots draw several times slower)."""
    fig = go.Figure()
    for colour, (name, values) in enumerate(evaluation["rows"].items()):
        fig.add_trace(go.Bar(x=evaluation["metrics"], y=[values[m] for m in evaluation["metrics"]], name=name,
                             marker_color=PALETTE[colour % len(PALETTE)],
                             text=[f"{values[m]:.4f}" for m in evaluation["metrics"]], textposition="outside"))
    return _layout(fig, f"{evaluation['split']} split, full catalogue", height=400, barmode="group")


def by_history_length(buckets: dict[str, list[dict]]) -> go.Figure:
    """NDCG at the largest cut-off per history-length bucket, one bar per model."""
    fig = go.Figure()
    for colour, (name, rows) in enumerate(buckets.items()):
        metric = next(key for key in rows[0] if key.startswith("ndcg@"))
        fig.add_trace(go.Bar(x=[f"{r['lengths']} ({r['users']:,})" for r in rows], y=[r[metric] for r in rows],
                             name=name, marker_color=PALETTE[colour % len(PALETTE)]))
    return _layout(fig, f"{metric} by history length (users)", barmode="group", xaxis_title="items before the target",
                   yaxis_title=metric)
