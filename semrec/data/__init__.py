"""Data sources and the download stage.

One module per source (amazon, movielens, kuairand, custom, demo), each with a `load(...) ->
SourceData` that takes only the settings it reads (`source.py`); `download.py` gets raw files
(local folder, cache or HTTP) and unpacks archives; `tables.py` reads a table file a person gives;
`prepare.py` is the stage: it loads the source and turns its tables into the canonical items,
interactions and leave-one-out splits.
"""
