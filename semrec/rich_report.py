"""Rich output for people: the reporter with progress bars, and the tables commands print."""

from contextlib import contextmanager

from rich.bar import Bar
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from semrec.report import ProgressBar, Reporter


class _RichBar(ProgressBar):
    def __init__(self, progress: Progress, task):
        self.progress, self.task = progress, task

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)

    def show(self, **figures) -> None:
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        self.progress.update(self.task, figures=text)


class RichReporter(Reporter):
    def __init__(self, console: Console):
        self.console = console

    def info(self, message: str) -> None:
        self.console.print(f"[cyan]>[/] {escape(message)}", soft_wrap=True, highlight=False)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True, highlight=False)

    @contextmanager
    def progress(self, description: str, total: int | None = None):
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        if total:
            columns.append(TimeRemainingColumn())
        columns.append(TextColumn("{task.fields[figures]}"))
        with Progress(*columns, console=self.console, transient=False, disable=not self.console.is_terminal) as progress:
            task = progress.add_task(description, total=total, figures="")
            yield _RichBar(progress, task)


def _flatten(figures: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_flatten(value, name + "."))
        elif isinstance(value, float):
            rows.append((name, f"{value:.4g}"))
        elif isinstance(value, list) and len(value) > 12:
            rows.append((name, f"[{len(value)} values]"))
        else:
            rows.append((name, str(value)))
    return rows


def print_figures(console: Console, figures: dict) -> None:
    table = Table(show_header=False, box=None)
    for name, value in _flatten(figures):
        table.add_row(f"[bold]{name}[/]", value)
    console.print(table)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def print_status(console: Console, result: dict) -> None:
    colour = {"done": "green", "stale": "yellow", "missing": "red"}
    table = Table(title=result["project"])
    for column in ("stage", "state", "ran", "artifacts", "key figures"):
        table.add_column(column)
    for row in result["stages"]:
        artifacts = "\n".join(f"{name} {_size(size)}" for name, size in row["artifacts"].items())
        figures = "\n".join(f"{k}: {v}" for k, v in _flatten(row["figures"])[:8])
        state = f"[{colour[row['state']]}]{row['state']}[/]" + ("" if row["state"] == "done" else f"\n{row['reason']}")
        ran = f"{row['finished_at']}\n{row['seconds']} s" if row["finished_at"] else "-"
        table.add_row(row["stage"], state, ran, artifacts, figures)
    console.print(table)
    if result.get("key_figures"):
        print_key_figures(console, result["key_figures"])


def _share(x: float) -> str:
    return f"{100 * x:.0f}%"


def print_key_figures(console: Console, key: dict) -> None:
    """The report's key figures in a few lines, and the evaluation's headline metric as bars."""
    lines = []
    if "data" in key:
        lines.append("[bold]data[/]  " + " · ".join(f"{v:,} {k}" for k, v in key["data"].items()))
    if "tokenizer" in key:
        tok = key["tokenizer"]
        parts = [tok.get("kind", "")]
        if "collision_rate" in tok:
            parts.append(f"collisions {100 * tok['collision_rate']:.1f}%")
        for name in ("usage", "nmi"):
            if name in tok:
                parts.append(f"{name} " + "/".join(_share(v) if name == "usage" else f"{v:.2f}" for v in tok[name]))
        if "perplexity" in tok:
            parts.append("perplexity " + "/".join(f"{v:.0f}" for v in tok["perplexity"]))
        lines.append("[bold]tokenizer[/]  " + " · ".join(p for p in parts if p))
    if "retriever" in key:
        ret = key["retriever"]
        parts = [f"{k} {ret[k]:.4f}" for k in ("valid_ndcg@10", "valid_recall@10") if k in ret]
        if "best_step" in ret:
            parts.append(f"best step {ret['best_step']} of {ret.get('steps', '?')}")
        lines.append("[bold]retriever[/]  " + " · ".join([ret.get("arch", ""), *parts]).strip(" ·"))
    for line in lines:
        console.print(line, highlight=False)
    if "eval" in key:
        ev = key["eval"]
        table = Table(title=f"{ev['metric']} on the {ev['split']} split", title_justify="left", box=None)
        table.add_column("model")
        table.add_column(ev["metric"], justify="right")
        table.add_column("")
        top = max(ev["models"].values()) or 1.0
        for name, value in ev["models"].items():
            table.add_row(name, f"{value:.4f}", Bar(size=top, begin=0, end=value, width=30,
                                                     color="green" if name == "retriever" else "blue"))
        best = ev.get("vs_best_baseline")
        if best and best.get("ratio") is not None:
            table.add_row(f"retriever / {best['baseline']}", f"{best['ratio']:.2f}x", "", style="dim")
        console.print(table)


def print_eval(console: Console, result: dict) -> None:
    metrics = list(result["metrics"])
    table = Table(title=f"{result['split']} split, {result['users']} users, full catalogue")
    table.add_column("model")
    for m in metrics:
        table.add_column(m, justify="right")
    table.add_row(result.get("model", {}).get("name", "retriever"), *(f"{result['metrics'][m]:.4f}" for m in metrics))
    for name, values in result.get("baselines", {}).items():
        table.add_row(name, *(f"{values[m]:.4f}" for m in metrics))
    best = result.get("vs_best_baseline")
    if best:
        table.add_row(f"retriever / {best['baseline']}",
                      *("-" if best["ratio"][m] is None else f"{best['ratio'][m]:.2f}x" for m in metrics),
                      style="dim")
    console.print(table)


def print_recommendations(console: Console, result: dict) -> None:
    table = Table(title=f"recommendations for {result.get('user') or 'the given history'}")
    for column in ("rank", "item", "title", "score", "semantic id", "tags"):
        table.add_column(column)
    for row in result["items"]:
        table.add_row(
            str(row["rank"]),
            row["item_key"],
            row.get("title") or "",
            f"{row['score']:.3f}",
            "-".join(str(c) for c in row["semantic_id"]),
            " > ".join(row.get("tags") or []),
        )
    console.print(table)
