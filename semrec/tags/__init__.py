"""Hierarchical tags per item, and the shape of `tags.parquet` every consumer relies on.

A tag at level l is the full path of names from level 1 to l joined by " > " ("Makeup > Nails >
Nail Polish"), so a tag string names exactly one parent (the path without its last name) and the
tree is valid by construction. The text shown to people is the last name: `tag_label(tag)`.
Each level also records where its tag came from: "metadata" (the item's category path),
"llm" (an answer of the configured endpoint) or "fallback" (a filler or a clustering label).
"""

SEPARATOR = " > "
SOURCES = ("metadata", "llm", "fallback")


def tag_columns(levels: int) -> list[str]:
    return [f"tag_{level}" for level in range(1, levels + 1)]


def tag_columns_in(names: list[str]) -> list[str]:
    """The tag columns among a table's column `names`, in level order (tag_10 after tag_9)."""
    return sorted((name for name in names if name.startswith("tag_")), key=lambda name: int(name[4:]))


def source_columns(levels: int) -> list[str]:
    return [f"source_{level}" for level in range(1, levels + 1)]


def tag_label(tag: str) -> str:
    """The name shown to people: the last component of the tag's path."""
    return tag.rsplit(SEPARATOR, 1)[-1]


def clean_name(name: str) -> str:
    """One name of a path: whitespace collapsed, and ">" replaced so that it cannot split the path."""
    return " ".join(str(name).replace(">", "-").split())


def join_path(names: list[str]) -> list[str]:
    """["Makeup", "Nails"] -> ["Makeup", "Makeup > Nails"]: the tag string of every level."""
    tags, prefix = [], ""
    for name in names:
        prefix = name if not prefix else f"{prefix}{SEPARATOR}{name}"
        tags.append(prefix)
    return tags


def tree_violations(frame, levels: int) -> list[str]:
    """Tags of tags.parquet that break the tree: a level-l tag whose parent is not its path prefix,
    or a tag with more than one parent. Empty when the tree is valid."""
    import polars as pl

    problems = []
    columns = tag_columns(levels)
    if frame.select(pl.any_horizontal(pl.col(c).is_null() | (pl.col(c) == "") for c in columns)).to_series().any():
        problems.append("some items have an empty tag")
    for parent_col, child_col in zip(columns, columns[1:]):
        pairs = frame.select(parent_col, child_col).unique()
        multi = pairs.group_by(child_col).len().filter(pl.col("len") > 1)
        problems.extend(f"{tag!r} has {n} parents" for tag, n in multi.iter_rows())
        for parent, child in pairs.iter_rows():
            if child.rsplit(SEPARATOR, 1)[0] != parent:
                problems.append(f"{child!r} is not a child of {parent!r}")
    return problems
