"""Training: learning-rate schedules, optimizers, checkpoints and the training loop."""
