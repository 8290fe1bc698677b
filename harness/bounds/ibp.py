"""The project's own interval bound propagation (IBP; Gowal et al. 2018).

Boxes travel through the network in center-radius form (c, r): a linear map W sends the box to
(W c + b, |W| r), which costs one matrix product for the center and one for the radius and is
exact for a box. ReLU is applied to the corners (lower = c - r, upper = c + r).

Two exact rewrites make it cheaper and tighter than a layer-by-layer walk:

- A BatchNorm directly after a Conv2d / Linear is folded into that layer's weights (the
  composition is one affine map, so the box is the same in exact arithmetic) - it saves two
  elementwise passes over the largest tensors per block.
- A specification matrix C (rows e_y - e_j) is folded into the last Linear layer
  (W' = C W, b' = C b per sample: Gowal et al.'s "elision"), which is tighter than bounding the
  logits and subtracting, and is what auto_LiRPA's IBP computes when given C.

Everything is differentiable: IBP training backpropagates through :func:`ibp_bounds`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from harness.models import SUPPORTED_LAYERS, Normalize, batchnorm_affine


class UnsupportedLayerError(TypeError):
    """The model holds a layer the own IBP cannot bound (it names the layer and the supported types)."""


@dataclass
class IBPBounds:
    """Interval bounds of one IBP pass.

    ``lower``/``upper`` bound ``C @ logits`` (shape (B, M)) when a specification C was given, else the
    logits (B, K). ``preact`` holds the (lower, upper) bounds of the input of every ReLU, in order.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    preact: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


def _supported_names() -> str:
    return ", ".join(t.__name__ for t in SUPPORTED_LAYERS) + " (inside nn.Sequential containers)"


def _unsupported(layer: nn.Module, why: str = "") -> UnsupportedLayerError:
    detail = f" ({why})" if why else ""
    return UnsupportedLayerError(
        f"own IBP cannot bound layer type {type(layer).__name__}{detail}; supported: {_supported_names()}")


def flatten_layers(model: nn.Module) -> list[nn.Module]:
    """The model's layers in execution order, nested ``nn.Sequential`` containers flattened.

    Types are matched exactly, not by ``isinstance``: a subclass may override ``forward`` and
    then the interval rule of its parent would be unsound. Raises :class:`UnsupportedLayerError`.
    """
    if type(model) is nn.Sequential:
        out: list[nn.Module] = []
        for child in model:
            out.extend(flatten_layers(child))
        return out
    if type(model) not in SUPPORTED_LAYERS:
        raise _unsupported(model)
    if type(model) is nn.Conv2d and model.padding_mode != "zeros":
        raise _unsupported(model, f"padding_mode={model.padding_mode!r}; only 'zeros' is supported")
    if isinstance(model, nn.modules.batchnorm._BatchNorm) and not model.training and model.running_mean is None:
        raise _unsupported(model, "eval-mode BatchNorm without running statistics")
    return [model]


def _channel_view(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Per-channel vector shaped to broadcast over a (B, C, ...) tensor of ``ndim`` dims."""
    return v.view(1, -1, *([1] * (ndim - 2)))


def _fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None,
                    bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of ``bn(layer(x))`` as a single affine layer (output channel = dim 0 of weight)."""
    scale, shift = batchnorm_affine(bn)
    w = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    b = shift if bias is None else bias * scale + shift
    return w, b


def ibp_bounds(model: nn.Module, lower: torch.Tensor, upper: torch.Tensor,
               C: torch.Tensor | None = None) -> IBPBounds:
    """Interval bounds of ``model`` (or of ``C @ model``) over the input box [lower, upper].

    Args:
        model: an ``nn.Sequential`` of the layers in :data:`harness.models.SUPPORTED_LAYERS`
            (nested Sequentials allowed). BatchNorm uses :func:`harness.models.batchnorm_affine`:
            running statistics in eval mode, the frozen clean-pass statistics in training mode.
        lower, upper: the input box, same shape (B, ...) and dtype/device as the model.
        C: optional specification (B, M, K), folded into the last Linear layer when the network
            ends with one (else applied to the logit box by interval arithmetic, which is looser).

    Returns:
        :class:`IBPBounds` with (B, M) bounds of ``C @ logits`` (or (B, K) bounds of the logits) and
        the pre-activation bounds of every ReLU.
    """
    if lower.shape != upper.shape:
        raise ValueError(f"lower and upper must have the same shape, got {tuple(lower.shape)} and "
                         f"{tuple(upper.shape)}")
    layers = flatten_layers(model)
    if C is not None and (C.dim() != 3 or C.shape[0] != lower.shape[0]):
        raise ValueError(f"C must have shape (B, M, K) with B = {lower.shape[0]}, got {tuple(C.shape)}")

    c = (upper + lower) / 2
    r = (upper - lower) / 2
    preact: list[tuple[torch.Tensor, torch.Tensor]] = []
    folded = C is None
    n = len(layers)
    i = 0
    while i < n:
        layer = layers[i]
        kind = type(layer)
        following = type(layers[i + 1]) if i + 1 < n else None
        if kind is Normalize:
            c = (c - layer.mean) / layer.std
            r = r / layer.std.abs()
        elif kind is nn.Conv2d:
            w, b = layer.weight, layer.bias
            if following is nn.BatchNorm2d:
                w, b = _fold_batchnorm(w, b, layers[i + 1])
                i += 1
            args = (layer.stride, layer.padding, layer.dilation, layer.groups)
            c = F.conv2d(c, w, b, *args)
            r = F.conv2d(r, w.abs(), None, *args)
        elif kind is nn.Linear:
            w, b = layer.weight, layer.bias
            if following is nn.BatchNorm1d and c.dim() == 2:
                w, b = _fold_batchnorm(w, b, layers[i + 1])
                i += 1
            if C is not None and i == n - 1 and c.dim() == 2:
                # Elision: the margin rows of C go through the last layer as one per-sample matrix.
                w = torch.matmul(C, w)  # (B, M, F)
                c = torch.bmm(w, c.unsqueeze(-1)).squeeze(-1)
                if b is not None:
                    c = c + torch.matmul(C, b)
                r = torch.bmm(w.abs(), r.unsqueeze(-1)).squeeze(-1)
                folded = True
            else:
                c = F.linear(c, w, b)
                r = F.linear(r, w.abs())
        elif kind is nn.ReLU:
            lo, hi = c - r, c + r
            preact.append((lo, hi))
            lo, hi = F.relu(lo), F.relu(hi)
            c = (hi + lo) / 2
            r = (hi - lo) / 2
        elif kind is nn.BatchNorm1d or kind is nn.BatchNorm2d:
            scale, shift = batchnorm_affine(layer)
            c = c * _channel_view(scale, c.dim()) + _channel_view(shift, c.dim())
            r = r * _channel_view(scale.abs(), r.dim())
        elif kind is nn.Flatten or kind is nn.AvgPool2d:
            # Both are linear with non-negative coefficients, so they map (c, r) exactly as they map x.
            c = layer(c)
            r = layer(r)
        else:  # flatten_layers admits only the types above; a new SUPPORTED_LAYERS entry lands here
            raise _unsupported(layer, "no interval rule implemented")
        i += 1

    if not folded:
        # The network does not end with a Linear over a flat vector: bound C @ logits from the box.
        c = torch.bmm(C, c.flatten(1).unsqueeze(-1)).squeeze(-1)
        r = torch.bmm(C.abs(), r.flatten(1).unsqueeze(-1)).squeeze(-1)
    return IBPBounds(lower=c - r, upper=c + r, preact=preact)
