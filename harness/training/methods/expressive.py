"""The expressive losses of De Palma et al. (2024): IBP and an adversarial term combined by alpha."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.config.methods import CCIBPParams, ExpIBPParams, MTLIBPParams
from harness.training.methods.base import (
    Batch,
    LossOut,
    Method,
    adversarial_margins,
    attack,
    clean_pass,
    ibp_terms,
    robust_ce_from_margins,
)


@dataclass
class MTLIBP(MTLIBPParams, Method):
    """De Palma et al. (2024): alpha L_IBP + (1 - alpha) CE(f(x_adv), y)."""

    def combine(self, robust: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        return self.alpha * robust + (1 - self.alpha) * adv

    def __call__(self, b: Batch) -> LossOut:
        logits, ce = clean_pass(b)
        x_adv = attack(b, self)
        adv = F.cross_entropy(b.model(x_adv), b.y)
        _, robust, reg, terms = ibp_terms(b, logits.shape[1], self.regulariser)
        loss = self.combine(robust, adv) + reg
        return LossOut(loss, {"loss_clean": ce.detach(), "loss_adv": adv.detach(), **terms}, logits)


@dataclass
class CCIBP(CCIBPParams, Method):
    """CC-IBP: L(alpha m_IBP + (1 - alpha) m_adv) on margins in logit-difference space."""

    def __call__(self, b: Batch) -> LossOut:
        logits, ce = clean_pass(b)
        x_adv = attack(b, self)
        m_ibp, _, reg, terms = ibp_terms(b, logits.shape[1], self.regulariser)
        m_adv = adversarial_margins(b.model(x_adv), b.y)
        loss = robust_ce_from_margins(self.alpha * m_ibp + (1 - self.alpha) * m_adv) + reg
        return LossOut(loss, {"loss_clean": ce.detach(), **terms}, logits)


@dataclass
class ExpIBP(ExpIBPParams, Method):
    """Exp-IBP: L_IBP^alpha * L_adv^(1 - alpha) (MTL-IBP's terms, combined multiplicatively)."""

    def combine(self, robust: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        return robust.clamp_min(1e-12) ** self.alpha * adv.clamp_min(1e-12) ** (1 - self.alpha)

    __call__ = MTLIBP.__call__  # MTL-IBP's terms; only ``combine`` differs
