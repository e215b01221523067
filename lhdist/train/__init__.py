"""Training: the loop, engines, data, checkpoints, metrics and the stage schedule."""
