"""Training: paired samples, losses, the training loop, DDP helpers, checkpoints and run folders."""
