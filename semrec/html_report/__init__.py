"""The offline HTML report: one page that shows the whole pipeline in pictures.

`collect` reads the artifacts that exist into plain figures, `charts` turns them into plotly
figures, `page` writes the one self-contained HTML file, `stage` is the pipeline stage that ties
them together, and `summary` gives `semrec status` the same key figures without reading tables.
"""
