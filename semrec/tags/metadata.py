"""Tags from category paths: the first L levels of each item's path, rare tags merged, gaps filled.

Names are kept per item and level as a grid `names[item][level]` (None = not known yet) beside a
grid of sources; the stage turns the grid into tag strings with `join_path`. Three rules:

- Root: when every item that has a path starts with the same name ("Beauty") and `drop_root` is
  set, that name is dropped: it carries no information.
- Rare tags: a tag seen at a level on fewer than `min_count` items becomes "Other <parent>" under
  its parent (level 1: "Other"); the item's deeper levels are cleared, since they sat under a tag
  that no longer exists. This runs top-down, so counts at a level see the merges above it.
- Gaps: a level still unknown at the end gets the filler "<parent name> (general)" (level 1:
  "Uncategorized"). A filler has one parent like any tag, so the tree stays valid.
"""

from semrec.tags import SEPARATOR, clean_name

OTHER = "Other"
UNCATEGORIZED = "Uncategorized"
GENERAL = " (general)"

Grid = list[list[str | None]]


def category_levels(paths: list[list[str] | None], levels: int, drop_root: bool) -> tuple[Grid, str | None]:
    """Per item, the first `levels` names of its category path (None where the path is shorter),
    and the root that was dropped (None if none was)."""
    cleaned = [[clean_name(n) for n in (path or []) if n is not None and clean_name(n)] for path in paths]
    roots = {path[0] for path in cleaned if path}
    root = roots.pop() if drop_root and len(roots) == 1 else None
    if root is not None:
        cleaned = [path[1:] for path in cleaned]
    grid = [[path[level] if level < len(path) else None for level in range(levels)] for path in cleaned]
    return grid, root


def _prefixes(names: list[str | None], upto: int) -> str:
    return SEPARATOR.join(n for n in names[: upto + 1])  # names[0..upto] are all known here


def merge_rare(names: Grid, sources: Grid, min_count: int, mergeable=("metadata", "llm")) -> list[int]:
    """Merge tags seen on fewer than `min_count` items into "Other <parent>", level by level.

    Only tags whose source is in `mergeable` are counted and merged (fallback labels are left as
    they are). Returns how many items were merged at each level.
    """
    levels = len(names[0]) if names else 0
    merged_per_level = []
    for level in range(levels):
        counts: dict[str, int] = {}
        for row, src in zip(names, sources):
            if row[level] is not None and src[level] in mergeable:
                tag = _prefixes(row, level)
                counts[tag] = counts.get(tag, 0) + 1
        merged = 0
        for row, src in zip(names, sources):
            if row[level] is None or src[level] not in mergeable or counts[_prefixes(row, level)] >= min_count:
                continue
            row[level] = f"{OTHER} {_strip_general(row[level - 1])}" if level else OTHER
            for deeper in range(level + 1, levels):
                row[deeper] = None
                src[deeper] = None
            merged += 1
        merged_per_level.append(merged)
    return merged_per_level


def _strip_general(name: str) -> str:
    return name[: -len(GENERAL)] if name.endswith(GENERAL) else name


def filler(parent: str | None) -> str:
    """The name that fills a level the item has no tag for: it names its parent, so it has exactly one."""
    return UNCATEGORIZED if parent is None else f"{_strip_general(parent)}{GENERAL}"


def fill_gaps(names: Grid, sources: Grid, source: str = "fallback") -> int:
    """Fill every unknown level with `filler`; returns the number of items that got a filler."""
    filled = 0
    for row, src in zip(names, sources):
        touched = False
        for level, name in enumerate(row):
            if name is None:
                row[level] = filler(row[level - 1] if level else None)
                src[level] = source
                touched = True
        filled += touched
    return filled
