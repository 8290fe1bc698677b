"""How computation runs: devices and their arithmetic, seeded randomness, exact float helpers, adaptive
batches, and worker processes tied to the life of the process that starts them."""
