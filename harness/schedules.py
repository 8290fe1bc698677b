"""Epsilon ramp and learning-rate schedules, as pure functions of the training position."""

from __future__ import annotations

EPS_SCHEDULES = ("smoothed", "linear", "constant")

# Shi et al. (2021) smoothed ramp: polynomial (fast-growing) start for the first quarter of the ramp,
# then linear; the two pieces meet with equal value and slope.
_SMOOTH_MID = 0.25
_SMOOTH_POWER = 4.0


def ramp_fraction(progress: float, kind: str = "smoothed") -> float:
    """Fraction of the final eps reached at ramp progress ``progress`` in [0, 1]."""
    if kind not in EPS_SCHEDULES:
        raise ValueError(f"unknown eps schedule {kind!r}; known: {', '.join(EPS_SCHEDULES)}")
    p = min(max(progress, 0.0), 1.0)
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return p
    m, k = _SMOOTH_MID, _SMOOTH_POWER
    a = 1.0 / (m ** (k - 1) * (m + k * (1 - m)))  # continuity of value and slope at m
    if p < m:
        return a * p ** k
    slope = a * k * m ** (k - 1)
    return 1.0 - slope * (1.0 - p)


def eps_at(step: int, steps_per_epoch: int, eps_final: float, ramp_start: float, ramp_length: float,
           kind: str = "smoothed") -> float:
    """Training eps at global step ``step``: 0 before ``ramp_start`` epochs, ``eps_final`` after the ramp."""
    epoch = step / max(steps_per_epoch, 1)
    if ramp_length <= 0:
        return eps_final if epoch >= ramp_start else 0.0
    return eps_final * ramp_fraction((epoch - ramp_start) / ramp_length, kind) if epoch >= ramp_start else 0.0


def lr_at(epoch: int, lr: float, milestones: list[int] | tuple[int, ...], decay: float) -> float:
    """Step decay: ``lr * decay ** (number of milestones <= epoch)``."""
    return lr * decay ** sum(1 for m in milestones if epoch >= m)
