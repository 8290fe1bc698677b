"""What every training method shares: the batch it sees, the loss it returns, and the building
blocks of the certified losses (the robust cross-entropy of margin bounds, IBP terms with Shi et
al.'s warm-up regularisers, the training attack, the clean pass)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.attacks import pgd_attack
from harness.bounds.ibp import ibp_bounds
from harness.bounds.spec import spec_matrix
from harness.config.methods import MethodParams
from harness.threat_model import input_box


@dataclass
class Batch:
    """What a method sees of one training step."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    eps: float          # current (ramped) training eps
    eps_final: float    # training eps at the end of the ramp
    teacher: nn.Module | None = None


#: The loss terms a method may report, the same columns in every run's metrics.jsonl (absent: null).
#: loss_ibp: the IBP robust loss over B(x, eps) (SABR: over its small box); loss_feat: CC-DIST's feature
#: term; loss_crown: CROWN-IBP's robust loss of its mixed bound.
TERMS = ("loss_clean", "loss_adv", "loss_ibp", "loss_ad", "reg", "loss_feat", "loss_crown")


@dataclass
class LossOut:
    """A method's loss for one batch, its named terms (detached, device tensors: reading them would
    synchronise the device every step), and the clean logits (for the running training accuracy)."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    clean_logits: torch.Tensor


def robust_ce_from_margins(margins: torch.Tensor) -> torch.Tensor:
    """L(m) = CE([0, -m], class 0), batch mean: the IBP loss when m are margin lower bounds."""
    zeros = torch.zeros_like(margins[:, :1])
    return torch.logsumexp(torch.cat([zeros, -margins], dim=1), dim=1).mean()


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a dense tensor in its memory order (channels-last included); a copy only otherwise."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)  # contiguous after the permute: a view
    return t.reshape(-1)


class _ReLUStats(torch.autograd.Function):
    """The sums Shi et al.'s regularisers need from one layer's pre-activation bounds, in few passes.

    For 1-D ``lo``, ``hi`` and ``s = hi + lo`` (twice the center) it returns the differentiable sums
    ``[sum(hi) - sum(lo), sum_a s, sum_a s^2, sum_i s, sum_i s^2]`` (a: active units, lo > 0; i: inactive,
    hi < 0) and the non-differentiable counts ``[n_a, n_i]``.

    Why by hand: autograd through the same formula by masked products spends about ten full-tensor
    passes and as many fresh tensors on the backward alone (fresh CPU memory costs page faults), which
    made the regulariser a sixth of a CNN7 step. Here the forward allocates three tensors (two masks and
    ``s``, squared in place once its plain sums are taken) and the backward two (the gradients). Masks
    are float, and sums against them are dot products: on the CPU, ``where`` and sums over bool tensors
    are ten times slower than float arithmetic.
    """

    @staticmethod
    def forward(ctx, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        active = torch.gt(lo, 0, out=torch.empty_like(lo))      # 1.0 / 0.0
        inactive = torch.lt(hi, 0, out=torch.empty_like(hi))
        s = hi + lo
        sum_a, sum_i = torch.dot(s, active), torch.dot(s, inactive)
        s.square_()
        sums = torch.stack([hi.sum() - lo.sum(), sum_a, torch.dot(s, active), sum_i, torch.dot(s, inactive)])
        counts = torch.stack([active.sum(), inactive.sum()])
        ctx.save_for_backward(lo, hi, active, inactive)
        ctx.mark_non_differentiable(counts)
        return sums, counts

    @staticmethod
    def backward(ctx, g: torch.Tensor, _counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi, active, inactive = ctx.saved_tensors
        g_d, g_a1, g_a2, g_i1, g_i2 = g.unbind()
        # d/ds = g_a1 + 2 g_a2 s on active units, g_i1 + 2 g_i2 s on inactive ones (disjoint 0/1 masks);
        # d/dlo = d/ds - g_d and d/dhi = d/ds + g_d
        slope = torch.mul(active, 2 * g_a2).addcmul_(inactive, 2 * g_i2)
        grad_lo = torch.add(hi, lo).mul_(slope).addcmul_(active, g_a1).addcmul_(inactive, g_i1).sub_(g_d)
        return grad_lo, torch.add(grad_lo, 2 * g_d, out=slope)


def shi_regularisers(preact: list[tuple[torch.Tensor, torch.Tensor]], r0: torch.Tensor,
                     tol: float = 0.5) -> torch.Tensor:
    """Shi et al. (2021) warm-up regularisers L_tight + L_relu on the IBP bounds of each ReLU input.

    Written for speed (during the eps ramp it runs on every pre-activation tensor of every step): the
    per-layer sums come from :class:`_ReLUStats`; the rest is arithmetic on (layers,) vectors, with no
    host synchronisation. The ratios of L_relu use twice the center (both are scale-invariant) and
    variances from first and second moments. A layer without active or without inactive units has no
    mean-ratio term, one with fewer than two of either no variance-ratio term (as by selection).
    ``tests/training/test_methods.py`` checks value and gradient against the formula by boolean selection.
    """
    if not preact:
        return r0.new_zeros(())
    stats = [_ReLUStats.apply(_flat(lo), _flat(hi)) for lo, hi in preact]
    sums = torch.stack([s for s, _ in stats])                   # (layers, 5)
    n_a, n_i = torch.stack([c for _, c in stats]).to(sums.dtype).unbind(1)
    diff, sum_a, sq_a, sum_i, sq_i = sums.unbind(1)
    numel = torch.tensor([lo.numel() for lo, _ in preact], dtype=sums.dtype, device=sums.device)
    tight = F.relu(tol - r0 / (diff / (2 * numel)).clamp_min(1e-12)) / tol
    # Unselected branches below stay finite (clamped denominators), so torch.where passes no NaN gradient.
    mean_a, mean_i = sum_a / n_a.clamp_min(1), sum_i / n_i.clamp_min(1)
    a = mean_a / (-mean_i).clamp_min(1e-12)
    ratio_mean = F.relu(tol - torch.minimum(a, 1 / a.clamp_min(1e-12)))
    var_a = (sq_a - n_a * mean_a * mean_a).clamp_min(0) / (n_a - 1).clamp_min(1)   # unbiased, as torch.var
    var_i = (sq_i - n_i * mean_i * mean_i).clamp_min(0) / (n_i - 1).clamp_min(1)
    v = var_a / var_i.clamp_min(1e-12)
    ratio_var = F.relu(tol - torch.minimum(v, 1 / v.clamp_min(1e-12)))
    zero = sums.new_zeros(())
    relu = (torch.where((n_a > 0) & (n_i > 0), ratio_mean, zero)
            + torch.where((n_a > 1) & (n_i > 1), ratio_var, zero)) / tol
    return tight.mean() + relu.mean()


def _input_radius_normalised(model: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Mean half-width of the input box after the model's Normalize layer (r0 of Shi et al.)."""
    std = getattr(model[0], "std", None) if isinstance(model, nn.Sequential) else None
    r = (hi - lo) / 2
    return (r / std).mean() if std is not None else r.mean()


class Method(MethodParams):
    """A method: its parameters (a :class:`harness.config.methods.MethodParams` subclass) and its loss."""

    def __call__(self, b: Batch) -> LossOut:  # pragma: no cover - abstract
        raise NotImplementedError


def clean_pass(b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean logits and CE(f(x), y). Every method runs it first: it sets the BatchNorm statistics
    that the later passes of the step reuse (:func:`harness.models.frozen_batch_stats`)."""
    logits = b.model(b.x)
    return logits, F.cross_entropy(logits, b.y)


def faded_regulariser(b: Batch, regulariser: float, preact: list[tuple[torch.Tensor, torch.Tensor]],
                      lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Shi et al.'s warm-up regularisers on ``preact`` (the IBP bounds of every ReLU input over the
    input box [lo, hi]), times ``regulariser * (1 - eps / eps_final)``: gone once the eps ramp ends."""
    fade = 1.0 - b.eps / b.eps_final if b.eps_final > 0 else 0.0
    if regulariser > 0 and fade > 0:
        return regulariser * fade * shi_regularisers(preact, _input_radius_normalised(b.model, lo, hi))
    return lo.new_zeros(())


def ibp_terms(b: Batch, num_classes: int, regulariser: float,
              box: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """IBP margin lower bounds, the IBP loss and the faded Shi et al. regulariser over ``box``
    (default: the threat model's box B(x, eps) at the current eps), and the terms to report."""
    lo, hi = box if box is not None else input_box(b.x, b.eps)
    C = spec_matrix(b.y, num_classes, dtype=b.x.dtype)
    bounds = ibp_bounds(b.model, lo, hi, C)
    loss_ibp = robust_ce_from_margins(bounds.lower)
    reg = faded_regulariser(b, regulariser, bounds.preact, lo, hi)
    return bounds.lower, loss_ibp, reg, {"loss_ibp": loss_ibp.detach(), "reg": reg.detach()}


def mix(clean: torch.Tensor, robust: torch.Tensor, w: float) -> torch.Tensor:
    """(1 - w) clean + w robust; at w = 1 the clean term is left out of the graph (no wasted backward)."""
    return robust if w == 1.0 else (1 - w) * clean + w * robust


def attack(b: Batch, method, loss: str = "ce", target_log_probs=None) -> torch.Tensor:
    """The method's training PGD on the model being trained (its attack_* parameters; eval mode, the
    global generator the run seeded), inside ``attack_range`` times the current eps."""
    return pgd_attack(b.model, b.x, b.y, method.attack_range * b.eps, steps=method.attack_steps,
                      restarts=method.attack_restarts, step_size=None if method.attack_step_size <= 0
                      else method.attack_step_size * b.eps, loss=loss, target_log_probs=target_log_probs)


def adversarial_margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - z_j for every wrong class j, in the row order of :func:`harness.bounds.spec.spec_matrix`."""
    C = spec_matrix(y, logits.shape[1], dtype=logits.dtype)
    return torch.einsum("bmk,bk->bm", C, logits)
