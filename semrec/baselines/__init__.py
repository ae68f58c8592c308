"""Baselines ranked on the same splits, the same histories and with the same metrics as the retriever."""
