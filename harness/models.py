"""Architectures, initialisations and the BatchNorm clean-statistics convention.

Every model is an ``nn.Sequential`` whose first layer is :class:`Normalize`, so
data, attacks and bounds all live in [0, 1] pixel space, and whose last layer is
the classification head, one ``nn.Linear`` over the penultimate features (every
builder of :data:`ARCHITECTURES` keeps that contract; :func:`split_head` relies on
it and checks it). Only the layer types
listed in :data:`SUPPORTED_LAYERS` are used, which is what the project's own IBP
(``harness.bounds.ibp``) knows how to bound.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as the model's first layer."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


SUPPORTED_LAYERS: tuple[type, ...] = (
    Normalize, nn.Conv2d, nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten, nn.AvgPool2d,
)


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def cnn_small(in_shape: tuple[int, int, int], num_classes: int, mean, std, width: int = 1,
              batchnorm: bool = True) -> nn.Sequential:
    """CPU-scale CNN: conv16(4x4/2)-conv32(4x4/2)-fc100-fc10, BN after every hidden layer (``batchnorm``)."""
    c, h, _ = in_shape
    c1, c2, f = 16 * width, 32 * width, 100 * width
    s = _conv_out(_conv_out(h, 4, 2, 1), 4, 2, 1)

    def bn(cls, n):
        return [cls(n)] if batchnorm else []
    return nn.Sequential(
        Normalize(mean, std),
        nn.Conv2d(c, c1, 4, stride=2, padding=1), *bn(nn.BatchNorm2d, c1), nn.ReLU(),
        nn.Conv2d(c1, c2, 4, stride=2, padding=1), *bn(nn.BatchNorm2d, c2), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c2 * s * s, f), *bn(nn.BatchNorm1d, f), nn.ReLU(),
        nn.Linear(f, num_classes),
    )


def cnn_small_nobn(in_shape: tuple[int, int, int], num_classes: int, mean, std, width: int = 1) -> nn.Sequential:
    """:func:`cnn_small` without BatchNorm: Wong & Kolter's (2018) MNIST / Fashion-MNIST network.

    Layers (after Normalize): 1 conv, 2 ReLU, 3 conv, 4 ReLU, 5 Flatten, 6 fc, 7 ReLU, 8 fc; their
    published state_dict numbers the same layers 0, 2, 5, 7 (no Normalize in front).
    """
    return cnn_small(in_shape, num_classes, mean, std, width, batchnorm=False)


def cnn7(in_shape: tuple[int, int, int], num_classes: int, mean, std, width: int = 64) -> nn.Sequential:
    """CNN7-BN of the certified-training literature (Shi et al. 2021; CTBench).

    conv3x3 w, w, 2w (stride 2), 2w, 2w, each followed by BN and ReLU, then FC 512 + BN + ReLU, FC classes.
    """
    c, h, _ = in_shape
    w1, w2 = width, 2 * width
    layers: list[nn.Module] = [Normalize(mean, std)]
    spec = [(c, w1, 1), (w1, w1, 1), (w1, w2, 2), (w2, w2, 1), (w2, w2, 1)]
    size = h
    for cin, cout, stride in spec:
        layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        size = _conv_out(size, 3, stride, 1)
    layers += [nn.Flatten(), nn.Linear(w2 * size * size, 512), nn.BatchNorm1d(512), nn.ReLU(),
               nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def mlp(in_shape: tuple[int, int, int], num_classes: int, mean, std, width: int = 64) -> nn.Sequential:
    """A two-hidden-layer MLP (used by tests and as the tiniest CPU model)."""
    c, h, w = in_shape
    return nn.Sequential(
        Normalize(mean, std), nn.Flatten(),
        nn.Linear(c * h * w, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, num_classes),
    )


ARCHITECTURES: dict[str, Callable[..., nn.Sequential]] = {"cnn_small": cnn_small, "cnn_small_nobn": cnn_small_nobn,
                                                        "cnn7": cnn7, "mlp": mlp}


def split_head(model: nn.Module) -> tuple[nn.Sequential, nn.Linear]:
    """``(features, head)`` with ``model(x) == head(features(x))``: the penultimate-feature extractor
    and the last Linear layer, for methods that distil or bound features (CC-DIST).

    Both share the model's modules (a slice of the Sequential, no copy), so gradients, BatchNorm
    statistics and :func:`frozen_batch_stats` apply to them as to the model. No module names are
    involved: the head is the last layer by the architectures' contract (module docstring).

    Raises:
        ValueError: the model is not an ``nn.Sequential`` ending with an ``nn.Linear``.
    """
    if not isinstance(model, nn.Sequential) or len(model) < 2 or type(model[-1]) is not nn.Linear:
        raise ValueError(f"split_head needs an nn.Sequential ending with its nn.Linear head, got "
                         f"{type(model).__name__} ending with "
                         f"{type(model[-1]).__name__ if isinstance(model, nn.Sequential) and len(model) else '-'}")
    return model[:-1], model[-1]


def build_model(arch: str, in_shape: tuple[int, int, int], num_classes: int, mean: Sequence[float],
                std: Sequence[float], width: int | None = None) -> nn.Sequential:
    """Build an architecture by name; ``width`` overrides its default width multiplier."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    kwargs = {} if width is None else {"width": width}
    return ARCHITECTURES[arch](tuple(in_shape), num_classes, mean, std, **kwargs)


def ibp_init(model: nn.Module) -> None:
    """Shi et al. (2021) IBP initialisation.

    Every Conv/Linear weight but the last is drawn from N(0, sigma^2), sigma = sqrt(2*pi) / fan_in,
    which keeps the IBP box width roughly constant through depth; biases start at 0.
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for m in layers[:-1]:
            fan_in = m.weight[0].numel()
            m.weight.normal_(0.0, math.sqrt(2 * math.pi) / fan_in)
            if m.bias is not None:
                m.bias.zero_()


def clean_batch_stats(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance of the clean pass's input to ``bn``, inside :func:`frozen_batch_stats`.

    Computed on first use, not in the clean pass itself: a step whose only training-mode forward is the
    clean one (standard, PGD-AT) never pays for them. They stay in the autograd graph (as auto_LiRPA's
    BatchNorm does with its batch statistics), so a bound pass's gradient reaches the layers before.
    Two passes (mean, then the mean of squared deviations) because torch's one-call ``var`` over
    (N, H, W) is several times slower on the CPU, and because ``E[x^2] - E[x]^2`` can cancel.
    """
    stats = getattr(bn, "_frozen_stats", None)
    if stats is None:
        x = getattr(bn, "_clean_input", None)
        if x is None:
            raise RuntimeError("BatchNorm in training mode has no clean-pass statistics: run the clean "
                               "forward inside harness.models.frozen_batch_stats(model) first")
        dims = [0] + list(range(2, x.dim()))
        with torch.enable_grad():  # first use may sit under no_grad; a later grad-enabled pass needs the graph
            mean = x.mean(dims, keepdim=True)
            dev = x - mean
            stats = bn._frozen_stats = (mean.flatten(), (dev * dev).mean(dims))
    return stats


def batchnorm_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel (scale, shift) a BatchNorm applies now.

    In eval mode: running statistics. In training mode: the clean-pass statistics frozen by
    :func:`frozen_batch_stats` (an error otherwise, since a bound pass must not compute its own).
    """
    if bn.training:
        mean, var = clean_batch_stats(bn)
    else:
        mean, var = bn.running_mean, bn.running_var
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


#: What :func:`frozen_batch_stats` attaches to each BatchNorm for the block (plain_copy leaves it out).
_BATCH_STATE = ("forward", "_clean_input", "_frozen_stats")


@contextmanager
def frozen_batch_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm convention of CTBench: statistics come from the clean pass, then stay fixed.

    Inside the block, the first training-mode forward of each BatchNorm (the clean pass) normalises
    with its batch statistics and updates the running ones as usual; every later training-mode
    forward (adversarial inputs, and the own IBP bound pass) reuses those same statistics.
    Eval-mode forwards (attacks) use the running statistics as always.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def make_forward(bn, original):
        def forward(x):
            if not bn.training:
                return original(x)
            if getattr(bn, "_clean_input", None) is None:
                bn._clean_input = x  # statistics computed from it on first use (clean_batch_stats)
                return original(x)
            # (x - mean) / sqrt(var + eps) * w + b with the clean-pass statistics, which stay in the
            # autograd graph (F.batch_norm refuses statistics that require grad)
            scale, shift = batchnorm_affine(bn)
            view = (1, -1) + (1,) * (x.dim() - 2)
            return x * scale.view(view) + shift.view(view)
        return forward

    for bn in bns:
        bn._clean_input = bn._frozen_stats = None
        bn.forward = make_forward(bn, bn.forward)  # an instance attribute: see _BATCH_STATE
    try:
        yield
    finally:
        for bn in bns:
            del bn.forward  # back to the class method
            bn._clean_input = bn._frozen_stats = None


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without the per-batch state :func:`frozen_batch_stats` attaches.

    Inside that block every BatchNorm carries a patched ``forward`` and the clean-pass input (a
    tensor in the autograd graph, which ``copy.deepcopy`` refuses); the copy has neither, so it runs
    the class's own BatchNorm (e.g. for auto_LiRPA to trace). The original is left as it was.
    """
    held = [(m, {k: m.__dict__.pop(k) for k in _BATCH_STATE if k in m.__dict__}) for m in model.modules()]
    try:
        return copy.deepcopy(model)
    finally:
        for m, state in held:
            m.__dict__.update(state)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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
