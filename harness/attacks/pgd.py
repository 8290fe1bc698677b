"""PGD (Madry et al.) in [0, 1] pixel space.

The attack owns the model's mode: it runs with the model in eval mode (BatchNorm uses running
statistics, as in CTBench) and restores the caller's mode afterwards.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from harness.attacks.confirm import confirm_broken
from harness.models import eval_mode
from harness.threat_model import clip_to_threat_model, input_box

ATTACK_LOSSES = ("ce", "margin", "kl")
#: The evaluation attack stops attacking a sample once its margin loss exceeds this (logits). Any
#: positive margin means misclassified; the small slack keeps a point whose margin is within float
#: rounding of zero from ending the attack, since the plain forward pass that confirms a break
#: (:mod:`harness.attacks.confirm`) might not agree on it.
STOP_MARGIN = 1e-3


def _loss_per_sample(logits: torch.Tensor, y: torch.Tensor, kind: str,
                     target_log_probs: torch.Tensor | None) -> torch.Tensor:
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if kind == "margin":  # max_{j != y} z_j - z_y: positive iff misclassified
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.clone()
        other.scatter_(1, y[:, None], float("-inf"))
        return other.max(1).values - true
    if kind == "kl":  # soft-label attack: KL(p_T || p_S(x'))
        return F.kl_div(F.log_softmax(logits, 1), target_log_probs, log_target=True, reduction="none").sum(1)
    raise ValueError(f"unknown attack loss {kind!r}; known: {', '.join(ATTACK_LOSSES)}")


#: Random starts of an attack: restart index -> uniform noise in [-1, 1] of the batch's shape.
StartNoise = Callable[[int], torch.Tensor]


def _keep_better(better: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Per sample, ``new`` where ``better`` else ``old`` (a select, not a masked copy: no device sync)."""
    return torch.where(better.view((-1,) + (1,) * (new.dim() - 1)), new, old)


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int,
               step_size: float | None = None, restarts: int = 1, loss: str = "ce",
               target_log_probs: torch.Tensor | None = None, start_noise: StartNoise | None = None,
               stop_above: float | None = None) -> torch.Tensor:
    """Return, per sample, the point of B(x, eps) ∩ [0, 1] with the highest attack loss found.

    Random uniform start, ``steps`` signed-gradient ascent steps of ``step_size`` (default
    2.5 * eps / steps), projection after each step; the best point over steps and restarts is kept.
    The random starts come from ``start_noise`` when given (evaluation: a function of the sample and
    a seed, see :class:`harness.runtime.randomness.SampleNoise`), else from torch's global generator (training:
    seeded by the run and saved in its checkpoints).

    ``stop_above``: a sample whose loss has exceeded this value takes no further steps or restarts
    (evaluation with the margin loss: a sample already misclassified is broken, and attacking it on
    costs as much as attacking a robust one). Each restart draws its noise for the whole batch all the
    same, so the generator's state afterwards does not depend on which samples stopped.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
    if eps == 0:
        return x.detach().clone()
    lo, hi = input_box(x, eps)
    alpha = 2.5 * eps / steps if step_size is None else step_size
    x = x.detach()
    best_x = x.clone()
    best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device, dtype=x.dtype)
    with eval_mode(model), torch.enable_grad():
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:  # gradients w.r.t. the input only
            p.requires_grad_(False)
        try:
            for r in range(restarts):
                if start_noise is None:
                    delta = torch.empty_like(x).uniform_(-1.0, 1.0) * eps
                else:
                    delta = start_noise(r).to(device=x.device, dtype=x.dtype) * eps
                x_adv = torch.min(torch.max(x + delta, lo), hi)
                if stop_above is None:
                    best_loss, best_x = _ascend(model, x_adv, y, lo, hi, alpha, steps, loss, target_log_probs,
                                                best_loss, best_x)
                    continue
                active = (best_loss <= stop_above).nonzero().squeeze(1)
                if len(active) == 0:
                    continue  # the noise above was drawn all the same (see the docstring)
                sub = (lambda t: t[active]) if len(active) < len(x) else (lambda t: t)
                tlp = None if target_log_probs is None else sub(target_log_probs)
                found_loss, found_x = _ascend(model, sub(x_adv), sub(y), sub(lo), sub(hi), alpha, steps, loss, tlp,
                                              sub(best_loss), sub(best_x), stop_above)
                best_loss, best_x = best_loss.index_copy(0, active, found_loss), best_x.index_copy(0, active, found_x)
        finally:
            for p in params:
                p.requires_grad_(True)
    return best_x.detach()


def _ascend(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
            alpha: float, steps: int, loss: str, target_log_probs: torch.Tensor | None, best_loss: torch.Tensor,
            best_x: torch.Tensor, stop_above: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One restart of PGD from ``x_adv``: (best loss, best point) per sample, updated from those given.

    With ``stop_above``, the samples whose loss exceeds it leave the batch (their best point is kept),
    so the later steps cost only what the remaining samples need.
    """
    live = None  # indices (into this batch) of the samples still attacked; None: all of them
    for i in range(steps + 1):
        last = i == steps
        with torch.set_grad_enabled(not last):
            if not last:
                x_adv.requires_grad_(True)
            per_sample = _loss_per_sample(model(x_adv), _take(y, live), loss, _take(target_log_probs, live))
            grad = None if last else torch.autograd.grad(per_sample.sum(), x_adv)[0]
        with torch.no_grad():
            per_sample, point = per_sample.detach(), x_adv.detach()
            old_loss, old_x = _take(best_loss, live), _take(best_x, live)
            better = per_sample > old_loss
            new_loss, new_x = torch.where(better, per_sample, old_loss), _keep_better(better, point, old_x)
            if live is None:
                best_loss, best_x = new_loss, new_x
            else:
                best_loss, best_x = best_loss.index_copy(0, live, new_loss), best_x.index_copy(0, live, new_x)
            if last:
                break
            x_adv = torch.min(torch.max(point + alpha * grad.sign(), _take(lo, live)), _take(hi, live))
            if stop_above is not None:
                keep = new_loss <= stop_above
                if not bool(keep.all()):
                    kept = keep.nonzero().squeeze(1)
                    if len(kept) == 0:
                        break
                    x_adv = x_adv[kept]
                    live = kept if live is None else live[kept]
    return best_loss, best_x


def _take(t: torch.Tensor | None, idx: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is None or idx is None else t[idx]


@torch.no_grad()
def pgd_robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 50,
               restarts: int = 3, step_size: float | None = None, start_noise: StartNoise | None = None
               ) -> torch.Tensor:
    """Evaluation attack: True where no point found by margin-loss PGD is misclassified.

    The clean point counts too, so a misclassified sample is never robust. A sample counts as broken
    only at a point of the exact threat model B(x, eps) ∩ [0, 1]: the attack's box ends are rounded
    to the nearest float, up to one unit outside the exact ball, so its points are clipped into it
    and checked (:mod:`harness.attacks.confirm`) before a plain forward pass decides.
    """

    with eval_mode(model):
        robust = model(x).argmax(1) == y
        if eps > 0:
            x_adv = pgd_attack(model, x, y, eps, steps=steps, restarts=restarts, step_size=step_size, loss="margin",
                               start_noise=start_noise, stop_above=STOP_MARGIN)
            point = clip_to_threat_model(x_adv, x, eps)
            robust &= ~confirm_broken(model, x, y, point, eps, batch_size=max(len(x), 1))
    return robust
