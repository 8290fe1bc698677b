"""Certified training with a frozen PGD teacher: AD-CERT (logit distillation) and CC-DIST (feature
distillation), as the AD-CERT authors implemented them (docs/methods.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.bounds.ibp import ibp_bounds
from harness.bounds.spec import spec_matrix
from harness.config.methods import ADCERTParams, CCDISTParams
from harness.models import split_head
from harness.threat_model import input_box
from harness.training.methods.base import (
    Batch,
    LossOut,
    Method,
    adversarial_margins,
    attack,
    clean_pass,
    faded_regulariser,
    ibp_terms,
    mix,
    robust_ce_from_margins,
)


def _teacher(b: Batch, method: str) -> torch.nn.Module:
    if b.teacher is None:
        raise ValueError(f"{method} needs a teacher model")
    return b.teacher


@dataclass
class ADCERT(ADCERTParams, Method):
    """AD-CERT as implemented by its authors (docs/methods.md).

    L = (1 - w) CE(f_S(x), y) + w [alpha L_IBP + (1 - alpha) L_AD]   (alpha > 0)
    L = (1 - w) CE(f_S(x), y) + w L_AD                                (alpha = 0)
    L_AD = KL(p_T(x_T) || p_S(x_adv)), batch mean; x_adv from PGD on the student.
    """

    def __call__(self, b: Batch) -> LossOut:
        teacher = _teacher(b, self.name)
        logits, ce = clean_pass(b)
        with torch.no_grad():
            t_clean = F.log_softmax(teacher(b.x), 1)
        needs_adv = self.variant != "natkl" or self.teacher_input == "adv"
        x_adv = None
        if needs_adv:
            if self.attack_loss == "kl":
                x_adv = attack(b, self, loss="kl", target_log_probs=t_clean)
            else:
                x_adv = attack(b, self)
        if self.teacher_input == "adv":
            with torch.no_grad():
                t_target = F.log_softmax(teacher(x_adv), 1)
        else:
            t_target = t_clean

        def kl(student_logits: torch.Tensor) -> torch.Tensor:
            return F.kl_div(F.log_softmax(student_logits, 1), t_target, log_target=True, reduction="batchmean")

        if self.variant == "natkl":
            l_ad = kl(logits)
        elif self.variant == "rslad":
            l_ad = kl(logits) / 6 + 5 * kl(b.model(x_adv)) / 6
        else:
            l_ad = kl(b.model(x_adv))
        terms = {"loss_clean": ce.detach(), "loss_ad": l_ad.detach()}
        if self.alpha > 0:
            _, robust, reg, ibp = ibp_terms(b, logits.shape[1], self.regulariser)
            inner = self.alpha * robust + (1 - self.alpha) * l_ad + reg
            terms.update(ibp)
        else:
            inner = l_ad
        return LossOut(mix(ce, inner, self.robust_weight), terms, logits)


def worst_case_feature_distance(lower: torch.Tensor, upper: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sum_j max((lower_j - t_j)^2, (upper_j - t_j)^2) per sample: the largest squared distance from the
    target to a point of the box [lower, upper] (a convex function's maximum over an interval lies at an end)."""
    return torch.maximum((lower - target).square(), (upper - target).square()).flatten(1).sum(1)


@dataclass
class CCDIST(CCDISTParams, Method):
    """CC-DIST (De Palma, arXiv 2602.02626) as the AD-CERT authors reimplemented it (docs/methods.md):

        L = CE(alpha u_IBP + (1 - alpha) m(f_S(x_adv)), y)
            + (5 / d) mean_b sum_j max((h_cc_lo,j - h_T,j)^2, (h_cc_hi,j - h_T,j)^2)
            + faded Shi et al. regularisers,
        h_cc = (1 - alpha) h_S(x_adv) + alpha [h_lo, h_hi].

    Reading of the first term: u_IBP are the IBP upper bounds of z_j - z_y over B(x, eps) (u_y = 0, as in
    methods.md's IBP loss) and m(f_S(x_adv)) the same logit differences at x_adv, so the CE over the
    convex combination with class y as target is CC-IBP's loss, CE([0, -(alpha m_IBP + (1 - alpha) m_adv)],
    0) on the margins m = z_y - z_j (:func:`robust_ce_from_margins`). h = the penultimate features (the
    head's input, :func:`harness.models.split_head`), d their number, [h_lo, h_hi] their IBP box over
    B(x, eps) (the same IBP pass gives m_IBP: the box goes on through the head with the margin rows
    folded in), h_T(x) the frozen teacher's features at the clean x (no gradient), x_adv CE-PGD on the
    student as in AD-CERT. The weight 5 / d is ``feature_weight / d``. Regularisers: on the IBP pass's
    bounds, as every IBP-based method here (the authors' code is a CTBench fork, where they apply).
    At alpha = 0 no IBP pass is made (the box has no weight), as AD-CERT at alpha = 0.
    """

    def __call__(self, b: Batch) -> LossOut:
        teacher = _teacher(b, self.name)
        logits, ce = clean_pass(b)
        features, head = split_head(b.model)
        with torch.no_grad():
            h_t = split_head(teacher)[0](b.x)
        x_adv = attack(b, self)
        h_adv = features(x_adv)
        m_adv = adversarial_margins(head(h_adv), b.y)
        a = self.alpha
        terms = {"loss_clean": ce.detach()}
        if a > 0:
            lo, hi = input_box(b.x, b.eps)
            box = ibp_bounds(features, lo, hi)
            m_ibp = ibp_bounds(head, box.lower, box.upper, spec_matrix(b.y, logits.shape[1], dtype=b.x.dtype)).lower
            reg = faded_regulariser(b, self.regulariser, box.preact, lo, hi)
            margins = a * m_ibp + (1 - a) * m_adv
            cc_lo, cc_hi = (1 - a) * h_adv + a * box.lower, (1 - a) * h_adv + a * box.upper
            terms["loss_ibp"] = robust_ce_from_margins(m_ibp).detach()
            terms["reg"] = reg.detach()
        else:
            reg, margins, cc_lo, cc_hi = ce.new_zeros(()), m_adv, h_adv, h_adv
        d = h_t[0].numel()
        feat = self.feature_weight / d * worst_case_feature_distance(cc_lo, cc_hi, h_t).mean()
        robust = robust_ce_from_margins(margins)
        terms.update({"loss_adv": robust.detach(), "loss_feat": feat.detach()})
        return LossOut(robust + feat + reg, terms, logits)
