"""What counts as a broken sample: the project's own check of an attack's points.

An attack library's verdict is never trusted. A point breaks a sample only if it lies in the
threat model, B(x, eps) ∩ [0, 1] with eps a real number and the point taken exactly as stored
(no tolerance), and a plain forward pass of the model (eval mode, no grad) misclassifies it.
:class:`AttackResult` carries only points that passed that check.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.attacks.pgd import eval_mode
from harness.floats import two_sum


@dataclass(frozen=True)
class AttackResult:
    """Per-sample outcome of an attack, every "broken" confirmed by :func:`confirm_broken`.

    robust: (N,) bool, True where no confirmed adversarial point was found (a misclassified clean
    sample is never robust). x_adv: like x, the confirmed adversarial point where not robust (the
    clean point itself for a misclassified clean sample), x elsewhere. broken_by: per sample, the
    name of the stage that broke it ("clean" for a misclassified clean sample) or None.
    rejected: how many points the attack library reported as adversarial that the project's check
    rejected (outside the threat model even after clipping into it, or not misclassified by a plain
    forward pass); such samples went on to the next stage.
    """

    robust: torch.Tensor
    x_adv: torch.Tensor
    broken_by: tuple[str | None, ...]
    rejected: int


def _inside(points: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Elementwise: the stored value of ``points`` lies in [x - eps, x + eps] ∩ [0, 1], exactly.

    The difference is formed in float64 (exact for inputs of float32 or float64) together with its
    rounding error (TwoSum). Round-to-nearest is monotone and eps is a float64, so |d| < eps or
    |d| > eps settles a coordinate; only |d| == eps needs the error's sign. NaN is outside.
    """
    p64, x64 = points.detach().double(), x.detach().double()
    d, err = two_sum(p64, -x64)
    size = d.abs()
    # |d + err| <= eps: where |d| == eps, err must not point away from zero (err * sign(d) <= 0).
    inside = (size < eps) | ((size == eps) & (err * d.sign() <= 0))
    return inside & (p64 >= 0.0) & (p64 <= 1.0)


def in_threat_model(points: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """(N,) bool: True where every coordinate of ``points`` lies in B(x, eps) ∩ [0, 1], exactly.

    ``points`` and ``x`` are taken as the exact real numbers they store and ``eps`` as the exact
    real number of the Python float: no tolerance and no rounding decides a borderline coordinate.
    """
    if points.shape != x.shape:
        raise ValueError(f"points must have the shape of x, got {tuple(points.shape)} and {tuple(x.shape)}")
    return _inside(points, x, float(eps)).flatten(1).all(1)


def _inner_end(x: torch.Tensor, eps: float, sign: float) -> torch.Tensor:
    """x + sign * eps clamped to [0, 1] in x's dtype, moved one step towards x where rounding left the ball."""
    end = (x.double() + sign * eps).clamp(0.0, 1.0).to(x.dtype)
    # One step suffices: the float64 sum is off by far less than one unit of x's dtype.
    return torch.where(_inside(end, x, eps), end, torch.nextafter(end, x))


def clip_to_threat_model(points: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """``points`` (cast to x's dtype) clipped coordinate-wise into B(x, eps) ∩ [0, 1] as stored in x's dtype.

    For a library's point that ended a rounding outside the ball (a box end rounded away from x).
    The result still has to pass :func:`in_threat_model`; this only makes that possible.
    """
    eps = float(eps)
    p = points.detach().to(x.dtype)
    return torch.min(torch.max(p, _inner_end(x, eps, -1.0)), _inner_end(x, eps, 1.0))


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Argmax labels of a plain forward pass of ``model`` in eval mode (mode restored), in batches."""
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)
    with eval_mode(model):
        return torch.cat([model(chunk).argmax(1) for chunk in x.split(batch_size)])


def confirm_broken(model: nn.Module, x: torch.Tensor, y: torch.Tensor, points: torch.Tensor, eps: float,
                   *, batch_size: int = 256) -> torch.Tensor:
    """(N,) bool: True where ``points`` is a counterexample for (x, y) at ``eps``.

    That is: the point lies in B(x, eps) ∩ [0, 1] exactly (:func:`in_threat_model`, in x's dtype)
    and a plain forward pass of ``model`` (eval mode, no grad) gives argmax != y.
    """
    points = points.detach().to(x.dtype)
    return in_threat_model(points, x, eps) & (predict(model, points, batch_size) != y)
