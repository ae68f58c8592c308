"""Where each artifact lives inside the workspace folder (see DESIGN.md, "Artifacts"), and the machine cache.

Names only, so that stages, the workspace and the report can agree on paths without importing
each other.
"""

ITEMS = "data/items.parquet"
INTERACTIONS = "data/interactions.parquet"
SPLITS = "data/splits.parquet"
EMBEDDINGS = "embeddings.safetensors"
TAGS = "tags.parquet"
TOKENIZER = "tokenizer"
SEMANTIC_IDS = "semantic_ids.parquet"
RETRIEVER = "retriever"
SASREC = "baselines/sasrec"
EVAL_METRICS = "eval/metrics.json"
REPORT = "report/index.html"
MANIFEST = "manifest.json"


def cache_dir():
    """Raw downloads and embeddings, once per machine: `SEMREC_CACHE_DIR`, else the platform's user cache folder."""
    import os
    from pathlib import Path

    override = os.environ.get("SEMREC_CACHE_DIR")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("semrec"))
