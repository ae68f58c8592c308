"""The generative retriever: model.py (encoder-decoder and decoder-only), data.py (prefix examples and
leave-one-out targets), beam.py (trie-constrained beam search), fit.py (training, and loading a
trained retriever for `semrec eval` and `semrec recommend`)."""
