"""Data sources and the download stage.

One module per source (amazon, movielens, kuairand, custom, demo), each with `load(ws) ->
SourceData`; `download.py` gets raw files (local folder, cache or HTTP); `prepare.py` turns a
source's tables into the canonical items, interactions and leave-one-out splits.
"""
