"""Building blocks of `recipes/transfer.py` (train or fine-tune a classifier with a published φ, or a baseline):
arguments, data, model / φ / regularizer, checkpoints, and the report (results, plots, model card)."""
