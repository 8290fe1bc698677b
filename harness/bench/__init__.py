"""Speed benchmarks: medians measured in one process (``python -m harness bench ...``)."""
