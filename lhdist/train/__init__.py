"""Training: the loop, engines, checkpoints, metrics, stage schedule (data lives in data.py)."""
