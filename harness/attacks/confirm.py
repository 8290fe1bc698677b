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

from harness.models import eval_mode
from harness.threat_model import in_threat_model


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
