"""The stated fallback: tag levels from hierarchical clustering of the item embeddings.

Level by level, top-down, the items whose tag at that level is still unknown are grouped by the
path above it (their metadata or LLM tags, or the clusters made one level up) and each group is
split by k-means on the embeddings into at most `branching` clusters of about `min_size` items or
more. Each cluster is named by the title words most distinctive of it against its sibling clusters
(against the whole catalogue when it has no sibling): the words whose share of titles in the
cluster most exceeds their share in the background, weighted by that share (one term of a KL
divergence). A group too small to split below a cluster that was itself made here gets the
filler "<parent> (general)" rather than the parent's words again. Same embeddings, titles and
seed -> the same tags.
"""

import math
import re
import zlib
from collections import Counter

import torch

from semrec.kmeans import kmeans
from semrec.tags import SEPARATOR, clean_name
from semrec.tags.metadata import Grid, filler

_WORD = re.compile(r"[a-z][a-z'&-]*[a-z]")
_STOPWORDS = frozenset(
    "and for with the from your you our this that are was not all new one two oz fl ml pack size set "
    "count piece pieces inch inches ounce ounces each per by of in on to or as at an "
    "liter liters litre gram grams pound pounds jar tube bottle bottles box".split()
)


def title_words(title: str | None) -> set[str]:
    return {w for w in _WORD.findall((title or "").lower()) if len(w) >= 3 and w not in _STOPWORDS}


def distinctive_words(
    cluster: list[set[str]], background: list[set[str]], top: int = 2, exclude: frozenset[str] = frozenset()
) -> list[str]:
    """The `top` words of `cluster`'s titles that most set it apart from `background` (never one of `exclude`)."""
    if not cluster:
        return []
    inside, outside = Counter(w for words in cluster for w in words), Counter(w for words in background for w in words)
    scores = []
    for word, count in inside.items():
        if word in exclude:
            continue
        share = count / len(cluster)
        base = (outside[word] + 1) / (len(background) + 2)
        scores.append((-(share * math.log(share / base)), word))
    if not scores:
        return []
    scores.sort()
    best = [word for score, word in scores[:top] if score < 0]
    return best or [scores[0][1]]


def _label(words: list[str]) -> str:
    return clean_name(", ".join(w.capitalize() for w in words))


def fill_by_clustering(
    names: Grid, sources: Grid, vectors: torch.Tensor, titles: list[str | None], *,
    branching: int, min_size: int, seed: int,
) -> int:
    """Fill every unknown level of `names` (source "fallback") by clustering; returns the items touched."""
    n_levels = len(names[0]) if names else 0
    words = [title_words(t) for t in titles]
    everyone = words
    touched: set[int] = set()
    for level in range(n_levels):
        groups: dict[str, list[int]] = {}
        for item, row in enumerate(names):
            if row[level] is None:
                groups.setdefault(SEPARATOR.join(row[:level]), []).append(item)
        if not groups:
            continue
        siblings: dict[str, set[str]] = {}
        for row in names:
            if row[level] is not None:
                siblings.setdefault(SEPARATOR.join(row[:level]), set()).add(row[level])
        for prefix in sorted(groups):
            members = groups[prefix]
            k = max(1, min(branching, len(members) // max(min_size, 1)))
            x = torch.nn.functional.normalize(vectors[members].float(), dim=1)  # (m, d)
            group_seed = seed * 1_000_003 + zlib.crc32(f"{level}:{prefix}".encode())
            assignments = kmeans(x, k, seed=group_seed).assignments.tolist() if k > 1 else [0] * len(members)
            clusters: dict[int, list[int]] = {}
            for item, cluster in zip(members, assignments):
                clusters.setdefault(cluster, []).append(item)
            background = [words[i] for i in members] if len(clusters) > 1 else everyone
            used = siblings.setdefault(prefix, set())
            for cluster in sorted(clusters, key=lambda c: clusters[c][0]):
                chosen = clusters[cluster]
                if k == 1 and level and all(sources[i][level - 1] == "fallback" for i in chosen):
                    label = filler(names[chosen[0]][level - 1])  # a cluster that does not split further
                else:
                    # the parent's own words name nothing new ("Makeup > Makeup")
                    exclude = frozenset(title_words(prefix))
                    label = _label(distinctive_words([words[i] for i in chosen], background, exclude=exclude)) or "Group"
                unique, n = label, 2
                while unique in used:
                    unique, n = f"{label} ({n})", n + 1
                used.add(unique)
                for item in chosen:
                    names[item][level] = unique
                    sources[item][level] = "fallback"
                    touched.add(item)
    return len(touched)
