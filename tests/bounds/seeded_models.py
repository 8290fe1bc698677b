"""Models with every parameter drawn from a seeded generator (for the bound tests; not a test module)."""

from __future__ import annotations

import math

import torch
from torch import nn


def seeded_init(model: nn.Module, seed: int) -> nn.Module:
    """Redraw every parameter and BatchNorm statistic from a seeded generator (PyTorch-like scales), eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                bound = 1 / math.sqrt(m.weight[0].numel())
                m.weight.uniform_(-bound, bound, generator=gen)
                m.bias.uniform_(-bound, bound, generator=gen)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
                m.running_mean.uniform_(-0.3, 0.3, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    return model.eval()
