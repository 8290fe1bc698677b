"""A two-pixel, two-class network whose every method's loss can be worked out by hand (shared by the
method tests)."""

import math

import torch
from torch import nn

from harness.models import Normalize


def tiny_net() -> nn.Sequential:
    """Two pixels, two classes: z = h = W1 x + b1 with both ReLUs active on all of [0, 1]^2, so
    z_0 - z_1 = -x_1 - 2 x_2, a margin every method's bound can be worked out by hand for."""
    net = nn.Sequential(Normalize([0.0], [1.0]), nn.Flatten(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        net[2].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]]))
        net[2].bias.fill_(5.0)
        net[4].weight.copy_(torch.eye(2))
        net[4].bias.zero_()
    return net


X_TINY = torch.tensor([[[[0.5, 0.5]]]])   # the box B(x, 0.1) = [0.4, 0.6]^2
Y_TINY = torch.tensor([0])


def softplus(m: float) -> float:
    """CE([0, -m], 0) = log(1 + exp(-m)) for one wrong class."""
    return math.log1p(math.exp(-m))
