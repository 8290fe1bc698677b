"""PGD (Madry et al.) in [0, 1] pixel space.

The attack owns the model's mode: it runs with the model in eval mode (BatchNorm uses running
statistics, as in CTBench) and restores the caller's mode afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

ATTACK_LOSSES = ("ce", "margin", "kl")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block and restore the previous mode of every submodule."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


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
               target_log_probs: torch.Tensor | None = None, start_noise: StartNoise | None = None) -> torch.Tensor:
    """Return, per sample, the point of B(x, eps) ∩ [0, 1] with the highest attack loss found.

    Random uniform start, ``steps`` signed-gradient ascent steps of ``step_size`` (default
    2.5 * eps / steps), projection after each step; the best point over steps and restarts is kept.
    The random starts come from ``start_noise`` when given (evaluation: a function of the sample and
    a seed, see :class:`harness.randomness.SampleNoise`), else from torch's global generator (training:
    seeded by the run and saved in its checkpoints).
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
    if eps == 0:
        return x.detach().clone()
    lo, hi = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
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
                for _ in range(steps):
                    x_adv.requires_grad_(True)
                    per_sample = _loss_per_sample(model(x_adv), y, loss, target_log_probs)
                    grad, = torch.autograd.grad(per_sample.sum(), x_adv)
                    with torch.no_grad():
                        better = per_sample.detach() > best_loss
                        best_loss = torch.where(better, per_sample.detach(), best_loss)
                        best_x = _keep_better(better, x_adv.detach(), best_x)
                        x_adv = torch.min(torch.max(x_adv + alpha * grad.sign(), lo), hi)
                with torch.no_grad():
                    final = _loss_per_sample(model(x_adv), y, loss, target_log_probs)
                    better = final > best_loss
                    best_loss = torch.where(better, final, best_loss)
                    best_x = _keep_better(better, x_adv, best_x)
        finally:
            for p in params:
                p.requires_grad_(True)
    return best_x.detach()


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
    from harness.attacks.confirm import clip_to_threat_model, confirm_broken

    with eval_mode(model):
        robust = model(x).argmax(1) == y
        if eps > 0:
            x_adv = pgd_attack(model, x, y, eps, steps=steps, restarts=restarts, step_size=step_size, loss="margin",
                               start_noise=start_noise)
            point = clip_to_threat_model(x_adv, x, eps)
            robust &= ~confirm_broken(model, x, y, point, eps, batch_size=max(len(x), 1))
    return robust
