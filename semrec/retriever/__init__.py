"""The generative retriever: model.py (what every architecture shares) with one module per registered
architecture (encoder_decoder.py, decoder_only.py), data.py (training examples and leave-one-out
targets), beam.py (trie-constrained beam search), rank.py (ranking many users), fit.py (training,
and loading a trained retriever for `semrec eval` and `semrec recommend`)."""
