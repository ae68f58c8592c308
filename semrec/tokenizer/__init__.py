"""Semantic-ID tokenizers: RQ-VAE (TIGER), HiD-VAE and residual k-means, and the IDs they assign.

One module per kind behind the protocol of `semrec.tokenizer.base`, which also says where a new kind goes.
"""
