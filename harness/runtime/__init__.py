"""How computation runs: devices and their arithmetic, seeded randomness, exact float helpers, adaptive batches."""
