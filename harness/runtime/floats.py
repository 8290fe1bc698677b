"""Exact floating-point building blocks shared by the bounds and the attacks' checks."""

from __future__ import annotations

import torch


def two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Knuth's TwoSum: s = fl(a + b) and the exact rounding error a + b - s (error-free in IEEE arithmetic)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)
