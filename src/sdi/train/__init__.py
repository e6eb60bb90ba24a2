"""Training: the optimisation loop and its checkpoints."""
