"""Training: the methods' losses and the shared training loop."""
