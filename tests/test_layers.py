"""The package's import graph, read from the modules' own imports: no circle, no upward arrow.

Every module has a layer; a module may import from its own layer or the layers below it, never
above. Models and the trainer sit below the workspace, so they can be used without one; the
stages read the workspace once and call them. A new module must be given a layer here.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "semrec"

LAYERS = {
    # 0: leaves that every layer may use
    "semrec": 0, "semrec.errors": 0, "semrec.report": 0, "semrec.settings": 0, "semrec.io": 0, "semrec.lock": 0,
    "semrec.artifacts": 0, "semrec.registry": 0, "semrec.device": 0, "semrec.metrics": 0, "semrec.distributed": 0,
    # 1: the project file, the stage table, the trainer, k-means
    "semrec.project": 1, "semrec.pipeline": 1, "semrec.train": 1, "semrec.kmeans": 1,
    # 2: the stages' libraries: data, embeddings, tags, tokenizers, retriever, baselines
    "semrec.data": 2, "semrec.embed": 2, "semrec.tags": 2, "semrec.tokenizer": 2, "semrec.retriever": 2,
    "semrec.baselines": 2,
    # 3: the workspace and its make-like runner
    "semrec.workspace": 3,
    # 4: what a command does beyond one stage
    "semrec.evaluate": 4, "semrec.recommend": 4, "semrec.rich_report": 4, "semrec.html_report": 4,
    # 5: the command line
    "semrec.cli": 5, "semrec.__main__": 5,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    """The layer of a module: its own entry, else its package's."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise KeyError(module)


def imports_of(module: str) -> set[str]:
    """Every semrec module that `module` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("semrec")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("semrec"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return {m for m in found if m in MODULES and m != module}


GRAPH = {module: imports_of(module) for module in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_has_a_layer(module):
    assert layer(module) >= 0


def test_no_import_points_up_a_layer():
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, targets in GRAPH.items() for b in targets if layer(b) > layer(a)]
    assert upward == []


def test_the_import_graph_has_no_circle():
    state: dict[str, str] = {}
    circles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert circles == []
