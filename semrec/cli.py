"""The `semrec` command line: one thin function per command over the library.

Results go to stdout (a rich table, or JSON with --json); messages and progress go to stderr.
A `SemrecError` becomes one coloured line and exit code 2 (bad input) or 1 (failure).
"""

import contextlib
import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="semrec",
    help="Generative recommendation with semantic IDs: download -> embed -> tag -> fit-tokenizer -> "
    "tokenize -> fit-retriever -> eval / recommend / report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON, for scripts.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Rerun this stage even if it is up to date.")]
ResumeOption = Annotated[
    bool, typer.Option("--resume/--no-resume", help="Continue from the last checkpoint of an interrupted run.")
]


def _max_minutes_option(setting: str):
    return Annotated[Optional[float], typer.Option(
        "--max-minutes", help=f"Stop training after this many minutes, keeping the best checkpoint (0 = no limit; "
        f"default: {setting}).")]


_global_options: dict = {"project": None, "debug": False, "wait": False, "held": None, "command": None}


@app.callback()
def _options(
    project: Annotated[
        Optional[Path], typer.Option("--project", "-p", help="Project file or folder (default: search upwards).")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error.")] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="If another command is writing in the workspace, wait for it instead of stopping.")
    ] = False,
):
    _global_options.update(project=project, debug=debug, wait=wait)


def _console(stderr: bool = True):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def command(name: str | None = None):
    """Register a command whose SemrecError becomes a clear message and exit code, never a traceback."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            from rich.markup import escape

            from semrec.errors import SemrecError

            debug = _global_options["debug"]
            try:
                with contextlib.ExitStack() as held:  # what the command holds (the workspace lock) until it ends
                    _global_options.update(held=held, command=name or fn.__name__.replace("_", "-"))
                    return fn(*args, **kwargs)
            except SemrecError as e:
                if debug:
                    _console().print_exception()
                if _rank() != 0 and type(e).__name__ == "SameOnEveryRank":
                    # rank 0 says it and exits with its code; the others leave quietly, so that torchrun
                    # (which stops every rank once one fails) does not stop rank 0 before it has said it
                    raise typer.Exit(0)
                _console().print(f"[bold red]{_rank_label()}error:[/] {escape(e.message)}", markup=True,
                                 soft_wrap=True)
                if e.hint:
                    _console().print(f"[yellow]hint:[/] {escape(e.hint)}", soft_wrap=True)
                raise typer.Exit(e.exit_code)
            except KeyboardInterrupt:
                _console().print("[red]interrupted[/]: finished artifacts are kept; run the command again to resume")
                raise typer.Exit(130)
            except typer.Exit:
                raise
            except Exception as e:
                if debug:
                    raise
                _console().print(f"[bold red]{_rank_label()}internal error:[/] {type(e).__name__}: {escape(str(e))}",
                                 soft_wrap=True)
                _console().print("[yellow]hint:[/] rerun with --debug for the traceback, and report it")
                raise typer.Exit(1)

        return app.command(name)(run)

    return wrap


def _world_size() -> int:
    """How many processes torchrun started for this command (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _rank() -> int:
    """This process's rank under torchrun (0 without), read from torchrun's variables: it holds after the
    process group is gone, when an error is printed."""
    return int(os.environ.get("RANK", "0")) if _world_size() > 1 else 0


def _rank_label() -> str:
    return f"rank {_rank()}: " if _world_size() > 1 else ""


def _join_ranks(project) -> None:
    """Join the other ranks (refusing a rank that read other settings) until the command ends."""
    import dataclasses

    from semrec import distributed
    from semrec.workspace import digest_json

    _global_options["held"].callback(distributed.stop)
    distributed.start(digest_json(dataclasses.asdict(project.settings)))


def _workspace(writes: bool = True):
    """The project's workspace; a command that may write in it holds its lock until the command ends.

    Under torchrun the ranks join here; rank 0 alone reports, holds the lock and writes.
    """
    from semrec.project import load_project
    from semrec.report import Reporter
    from semrec.rich_report import RichReporter
    from semrec.workspace import Workspace

    explicit = _global_options["project"]
    project = load_project(explicit=explicit)
    if _world_size() > 1:
        _join_ranks(project)
    reporter = RichReporter(_console()) if _rank() == 0 else Reporter()
    for notice in project.notices:
        reporter.warn(notice)
    ws = Workspace(project, reporter)
    if writes:
        _hold_lock(ws)
    return ws


def _hold_lock(ws) -> None:
    """Hold the workspace's lock until the command ends; under torchrun rank 0 holds it for all ranks,
    and the others learn whether it could (if not, rank 0 says why and they stop quietly)."""
    from semrec.errors import SemrecError

    refused = None
    if _rank() == 0:
        command_line = f"semrec {_global_options['command']}"
        try:
            _global_options["held"].enter_context(ws.lock(command_line, wait=_global_options["wait"]))
        except SemrecError as e:
            refused = e
    if _world_size() > 1:
        from semrec import distributed

        if distributed.any_rank(refused is not None) and refused is None:
            raise distributed.SameOnEveryRank("rank 0 could not take the workspace lock")
    if refused is not None:
        raise refused


def _emit(result, as_json: bool, render=None) -> None:
    if _rank() != 0:  # rank 0 prints the result of all
        return
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    elif render is not None:
        render(result)
    else:
        from semrec.rich_report import print_figures

        print_figures(_console(stderr=False), result)


@command()
def init(
    preset: Annotated[str, typer.Argument(help="demo, beauty, sports, toys, ml-1m, ml-32m, kuairand or custom.")],
    folder: Annotated[Path, typer.Argument(help="Folder of the new project.")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing semrec.toml.")] = False,
):
    """Write semrec.toml for a preset, with every setting spelled out."""
    from semrec.project import init_project

    path = init_project(preset, folder, force=force)
    _console().print(f"wrote {path}; next: `semrec download` (or straight to `semrec eval`)")


@command()
def status(as_json: JsonOption = False):
    """Each stage: done / stale / missing, when it ran, its artifact sizes and key figures."""
    from semrec.rich_report import print_status

    from semrec.html_report.summary import key_figures

    ws = _workspace(writes=False)
    rows = ws.status()
    result = {"project": str(ws.project.path), "stages": rows, "key_figures": key_figures(ws, rows)}
    _emit(result, as_json, lambda r: print_status(_console(False), r))


@command()
def download(
    offline: Annotated[bool, typer.Option("--offline", help="Use only data.local_dir and the cache, no network.")] = False,
    force: ForceOption = False,
    as_json: JsonOption = False,
):
    """Fetch the raw files into the cache and prepare items, interactions and leave-one-out splits."""
    ws = _workspace()
    ws.settings.data.offline = ws.settings.data.offline or offline
    _emit(ws.ensure("download", force=force), as_json)


@command()
def embed(force: ForceOption = False, as_json: JsonOption = False):
    """Encode every item's text with the sentence-transformers model (cached by model and text)."""
    ws = _workspace()
    _emit(ws.ensure("embed", force=force), as_json)


@command()
def tag(
    force: ForceOption = False,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Tag only a sample of N items with the LLM.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the LLM prompts without sending them.")] = False,
    show: Annotated[Optional[str], typer.Option("--show", help="Print one item's text and tag path.")] = None,
    as_json: JsonOption = False,
):
    """Give every item a path of hierarchical tags, from metadata, an LLM, or clustering."""
    from semrec.tags import stage as tags

    ws = _workspace()
    if show is not None:
        result = tags.show_item(ws, show)
    elif limit is not None or dry_run:
        result = tags.tag_sample(ws, limit=limit, dry_run=dry_run)
    else:
        result = ws.ensure("tag", force=force)
    _emit(result, as_json)


@command("fit-tokenizer")
def fit_tokenizer(force: ForceOption = False, resume: ResumeOption = True, as_json: JsonOption = False):
    """Fit the semantic-ID tokenizer (tokenizer.kind: rqvae, hidvae or rqkmeans)."""
    ws = _workspace()
    _emit(ws.ensure("fit-tokenizer", force=force, options={"resume": resume}), as_json)


@command()
def tokenize(
    force: ForceOption = False,
    items: Annotated[
        Optional[Path], typer.Option("--items", help="New items (same columns as the items table) to give IDs, cold start.")
    ] = None,
    show: Annotated[Optional[str], typer.Option("--show", help="Print one item's semantic ID and its neighbours.")] = None,
    as_json: JsonOption = False,
):
    """Give every item its semantic ID: the code tuple plus a collision token."""
    from semrec.tokenizer import ids

    ws = _workspace()
    if show is not None:
        result = ids.show_item(ws, show)
    elif items is not None:
        result = ids.tokenize_new_items(ws, items)
    else:
        result = ws.ensure("tokenize", force=force)
    _emit(result, as_json)


@command("fit-retriever")
def fit_retriever(
    force: ForceOption = False,
    resume: ResumeOption = True,
    max_minutes: _max_minutes_option("retriever.train.max_minutes") = None,
    as_json: JsonOption = False,
):
    """Train the generative retriever on the users' semantic-ID sequences."""
    ws = _workspace()
    if max_minutes is not None:
        ws.settings.retriever.train.max_minutes = max_minutes
    _emit(ws.ensure("fit-retriever", force=force, options={"resume": resume}), as_json)


@command("fit-baseline")
def fit_baseline(
    force: ForceOption = False,
    resume: ResumeOption = True,
    max_minutes: _max_minutes_option("baselines.sasrec.train.max_minutes") = None,
    as_json: JsonOption = False,
):
    """Train the SASRec baseline (item IDs, full cross-entropy) that `semrec eval` ranks beside the retriever."""
    ws = _workspace()
    if max_minutes is not None:
        ws.settings.baselines.sasrec.train.max_minutes = max_minutes
    _emit(ws.ensure("fit-baseline", force=force, options={"resume": resume}), as_json)


@command("eval")
def evaluate(
    split: Annotated[Optional[str], typer.Option("--split", help="test (default) or valid.")] = None,
    baselines: Annotated[
        Optional[str], typer.Option("--baselines", help="Comma-separated baselines to rank beside the retriever: "
                                    "popularity, sasrec (default: eval.baselines).")
    ] = None,
    force: ForceOption = False,
    as_json: JsonOption = False,
):
    """Recall@K and NDCG@K of the retriever beside the baselines (popularity; SASRec once trained)."""
    from semrec.errors import SemrecError
    from semrec.rich_report import print_eval
    from semrec.evaluate import check_baselines

    ws = _workspace()
    if split is not None:
        if split not in ("test", "valid"):
            raise SemrecError(f"--split {split!r} is not a split", "use --split test or --split valid")
        ws.settings.eval.split = split
    if baselines is not None:
        names = [name.strip() for name in baselines.split(",") if name.strip()]
        check_baselines(names, "--baselines")
        ws.settings.eval.baselines = names
    _emit(ws.ensure("eval", force=force), as_json, lambda r: print_eval(_console(False), r))


@command()
def recommend(
    user: Annotated[Optional[str], typer.Option("--user", help="User id as the dataset names it.")] = None,
    history: Annotated[
        Optional[str], typer.Option("--history", help="Comma-separated item keys, for a user the data has not seen.")
    ] = None,
    k: Annotated[int, typer.Option("--k", help="How many items.")] = 10,
    exclude_seen: Annotated[
        bool, typer.Option("--exclude-seen/--include-seen", help="Drop items already in the history.")
    ] = True,
    as_json: JsonOption = False,
):
    """Recommend the next items for a user or a history, with their semantic IDs and tag paths."""
    from semrec.errors import SemrecError
    from semrec.recommend import Recommender
    from semrec.rich_report import print_recommendations

    if (user is None) == (history is None):
        raise SemrecError("give exactly one of --user or --history", "e.g. --user A1YJEY40YUW4SE or --history B004756YJA,B00021DJ32")
    ws = _workspace()
    ws.require("fit-retriever")
    recommender = Recommender.load(ws)
    if user is not None:
        result = recommender.for_user(user, k=k, exclude_seen=exclude_seen)
    else:
        keys = [key.strip() for key in history.split(",") if key.strip()]
        result = recommender.for_history(keys, k=k, exclude_seen=exclude_seen)
    _emit(result, as_json, lambda r: print_recommendations(_console(False), r))


@command()
def report(
    open_page: Annotated[bool, typer.Option("--open", help="Open the page in the default browser.")] = False,
    force: ForceOption = False,
    as_json: JsonOption = False,
):
    """Write report/index.html: the pipeline in pictures, one offline page, for the stages that have run."""
    from semrec.html_report.stage import open_report

    ws = _workspace()
    result = ws.ensure("report", force=force)
    _emit(result, as_json)
    if open_page:
        open_report(Path(result["path"]))


def main() -> None:
    app(prog_name="semrec")


if __name__ == "__main__":
    sys.exit(main())
