"""lhdist: context-parallel long-context pre-training with Lighthouse attention."""

__version__ = "0.1.0"
