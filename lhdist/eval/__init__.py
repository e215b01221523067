"""Evaluation: held-out loss during training, long-context checks of a model or checkpoint."""
