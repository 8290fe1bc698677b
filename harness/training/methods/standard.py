"""Methods without bounds: standard training and PGD adversarial training (the teachers)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from harness.config.methods import PGDParams, StandardParams
from harness.training.methods.base import Batch, LossOut, Method, attack, clean_pass


@dataclass
class Standard(StandardParams, Method):
    """CE(f(x), y)."""

    def __call__(self, b: Batch) -> LossOut:
        logits, ce = clean_pass(b)
        return LossOut(ce, {"loss_clean": ce.detach()}, logits)


@dataclass
class PGDAT(PGDParams, Method):
    """PGD adversarial training (Madry et al.): CE(f(x_adv), y). Also the teacher of AD-CERT and CC-DIST."""

    def __call__(self, b: Batch) -> LossOut:
        logits, ce = clean_pass(b)  # sets the clean BN statistics
        x_adv = attack(b, self)
        loss = F.cross_entropy(b.model(x_adv), b.y)
        return LossOut(loss, {"loss_clean": ce.detach(), "loss_adv": loss.detach()}, logits)
