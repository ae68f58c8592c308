"""Semantic-ID tokenizers: RQ-VAE (TIGER), HiD-VAE and residual k-means, and the IDs they assign."""
