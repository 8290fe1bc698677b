"""Reference harness for certified-robustness training benchmarks (AD-CERT and baselines)."""

__version__ = "0.1.0"
