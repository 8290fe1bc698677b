"""Certification of a run: the cascade of stages, the record schema, and the per-run driver."""
