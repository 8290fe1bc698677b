"""Certified training by bounds alone: IBP (Shi et al. 2021), SABR (Mueller et al. 2023) and
CROWN-IBP (Zhang et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.config.methods import CROWNIBPParams, IBPParams, SABRParams
from harness.threat_model import input_box
from harness.training.methods.base import (
    Batch,
    LossOut,
    Method,
    attack,
    clean_pass,
    ibp_terms,
    mix,
    robust_ce_from_margins,
)


@dataclass
class IBP(IBPParams, Method):
    """Shi et al. (2021): (1 - w) CE(f(x), y) + w L_IBP + faded warm-up regularisers."""

    def __call__(self, b: Batch) -> LossOut:
        logits, ce = clean_pass(b)
        _, robust, reg, terms = ibp_terms(b, logits.shape[1], self.regulariser)
        loss = mix(ce, robust, self.robust_weight) + reg
        return LossOut(loss, {"loss_clean": ce.detach(), **terms}, logits)


def small_box(x: torch.Tensor, center: torch.Tensor, eps: float, ratio: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """SABR's propagation region: the box of radius tau = ratio * eps around ``center``, shifted (per
    pixel) to lie inside the threat model's box B(x, eps) ∩ [0, 1].

    The center is clamped to [lo + tau, hi - tau] of the threat box [lo, hi] (CTRAIN's
    ``get_propagation_region``). Where the threat box is no wider than 2 tau (a pixel clipped by [0, 1]
    with ratio > 0.5, or ratio >= 1 everywhere) the region is the whole threat box there: CTRAIN's clamp
    would then put part of the small box outside B(x, eps), and the issue asks that it stay inside.
    """
    lo, hi = input_box(x, eps)
    if ratio >= 1.0:
        return lo, hi  # the small box is the whole threat box (exactly, not up to rounding)
    tau = ratio * eps
    full = (hi - lo) <= 2 * tau
    c = torch.minimum(torch.maximum(center, lo + tau), hi - tau)
    # minimum / maximum with the threat box: c -+ tau may round an ulp outside it
    return torch.where(full, lo, torch.maximum(c - tau, lo)), torch.where(full, hi, torch.minimum(c + tau, hi))


@dataclass
class SABR(SABRParams, Method):
    """SABR (Mueller et al., ICLR 2023): (1 - w) CE(f(x), y) + w L_IBP(small box) + faded regularisers.

    x_adv = PGD (CE, true labels) on the model being trained inside B(x, eps) at the current eps; the
    IBP loss is taken over :func:`small_box` around x_adv with tau = box_ratio * eps, with the
    warm-up regularisers of Shi et al. on that box's bounds (CTBench's SABR trains with them). At
    box_ratio = 1 the box is B(x, eps) itself and the loss is IBP's. BatchNorm statistics come from the
    clean pass as for every method here (CTRAIN's SABR takes them from x_adv instead).
    """

    attack_range = 1.0  # PGD over the whole threat model; the small box is then placed inside it

    def __call__(self, b: Batch) -> LossOut:
        logits, ce = clean_pass(b)
        x_adv = attack(b, self) if self.box_ratio < 1.0 else b.x  # at ratio 1 the center is irrelevant
        box = small_box(b.x, x_adv.detach(), b.eps, self.box_ratio)
        _, robust, reg, terms = ibp_terms(b, logits.shape[1], self.regulariser, box=box)
        loss = mix(ce, robust, self.robust_weight) + reg
        return LossOut(loss, {"loss_clean": ce.detach(), **terms}, logits)


@dataclass
class CROWNIBP(CROWNIBPParams, Method):
    """CROWN-IBP (Zhang et al., ICLR 2020), as in their code and CTRAIN's:

        m     = beta * m_CROWN-IBP + (1 - beta) * m_IBP     (lower bounds of z_y - z_j over B(x, eps))
        L     = kappa * CE(f(x), y) + (1 - kappa) * CE([0, -m], 0) + faded Shi et al. regularisers
        beta  = beta_end + (beta_start - beta_end) * (1 - eps / eps_final), kappa likewise,

    so both move from their start to their end values as the eps ramp proceeds (measured by eps, as
    their ``factor = (max_eps - eps) / max_eps``; with the smoothed schedule beta stays near 1 longer
    than with a linear one). m_IBP is the project's own IBP; m_CROWN-IBP comes from auto_LiRPA
    (:func:`harness.bounds.lirpa.lirpa_training_margin_bounds`, differentiable). Any convex
    combination of two sound lower bounds is one. With beta = 0 auto_LiRPA is not called and the loss
    is IBP's with robust_weight = 1 - kappa; with 1 - kappa = 0 neither bound is needed for the loss.
    """

    def schedule(self, b: Batch) -> tuple[float, float]:
        """(beta, kappa) at the batch's eps."""
        left = 1.0 - b.eps / b.eps_final if b.eps_final > 0 else 0.0  # the ramp's remaining fraction, in eps
        return (self.beta_end + (self.beta_start - self.beta_end) * left,
                self.kappa_end + (self.kappa_start - self.kappa_end) * left)

    def __call__(self, b: Batch) -> LossOut:
        logits, ce = clean_pass(b)
        beta, kappa = self.schedule(b)
        m_ibp, _, reg, terms = ibp_terms(b, logits.shape[1], self.regulariser)
        margins = m_ibp
        if beta > 0 and kappa < 1:
            # Imported here: importing auto_LiRPA patches torch, which runs without it must not pay for.
            from harness.bounds.lirpa import lirpa_training_margin_bounds

            lo, hi = input_box(b.x, b.eps)
            m_crown = lirpa_training_margin_bounds(b.model, b.x, b.y, lo, hi, "crown-ibp")
            margins = beta * m_crown + (1 - beta) * m_ibp
        robust = robust_ce_from_margins(margins)
        loss = mix(ce, robust, 1.0 - kappa) + reg
        return LossOut(loss, {"loss_clean": ce.detach(), "loss_crown": robust.detach(), **terms}, logits)
