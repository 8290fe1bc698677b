"""The project's own interval bound propagation (IBP; Gowal et al. 2018).

Boxes travel through the network in center-radius form (c, r): a linear map W sends the box to
(W c + b, |W| r), which costs one matrix product for the center and one for the radius and is
exact for a box. ReLU is applied to the corners (lower = c - r, upper = c + r).

Two exact rewrites make it cheaper and tighter than a layer-by-layer walk:

- A BatchNorm directly after a Conv2d / Linear is folded into that layer (the composition is one
  affine map, so the box is the same in exact arithmetic) - it saves two elementwise passes over
  the largest tensors per block.
- A specification matrix C (rows e_y - e_j) is folded into the last Linear layer
  (W' = C W, b' = C b per sample: Gowal et al.'s "elision"), which is tighter than bounding the
  logits and subtracting, and is what auto_LiRPA's IBP computes when given C. (A network ending in
  Linear + BatchNorm1d gets the BatchNorm folded in too, so there the own IBP is the tighter one:
  auto_LiRPA folds C only into a final Linear node.)

Speed (this is the engine of IBP training; ``python -m harness bench bounds`` measures it): a
BatchNorm after a wide Linear is applied to its (smaller) outputs instead of its weights; the 1/2 of
c = (u + l) / 2 and r = (u - l) / 2 after a ReLU is carried into the next layer's weights; float32
CPU convolutions run channels-last; tensors created here are updated in place where autograd allows.

Everything is differentiable: IBP training backpropagates through :func:`ibp_bounds`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from harness.models import SUPPORTED_LAYERS, Normalize, batchnorm_affine

#: Run float32 CPU convolutions in channels-last layout (see ibp_bounds; measured by harness.bench.bounds).
CPU_CHANNELS_LAST = True


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


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


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

    # The box travels as (c, r) with center = k*c and radius = k*r. After a ReLU, k = 1/2 and the halving
    # is folded into the next layer's (small) weights instead of two passes over the (large) activations.
    c, r, k = upper + lower, upper - lower, 0.5
    # oneDNN's float32 CPU convolutions run ~15% faster on channels-last tensors; a channels-last weight
    # makes the output channels-last, and every later elementwise op keeps the layout (values unchanged).
    channels_last = CPU_CHANNELS_LAST and lower.device.type == "cpu" and lower.dtype == torch.float32
    # In-place updates of tensors created here save fresh allocations (page faults on the CPU); with
    # autograd on, only where the producing op does not save its output for backward.
    inplace = not torch.is_grad_enabled()
    preact: list[tuple[torch.Tensor, torch.Tensor]] = []
    folded = C is None
    n = len(layers)
    i = 0
    while i < n:
        layer = layers[i]
        kind = type(layer)
        following = type(layers[i + 1]) if i + 1 < n else None
        if kind is Normalize:
            c = c * (k / layer.std) - layer.mean / layer.std
            r = r * (k / layer.std.abs())
            k = 1.0
        elif kind is nn.Conv2d:
            w, b = layer.weight, layer.bias
            if following is nn.BatchNorm2d:  # conv weights are far smaller than conv outputs: fold there
                w, b = _fold_batchnorm(w, b, layers[i + 1])
                i += 1
            args = (layer.stride, layer.padding, layer.dilation, layer.groups)
            if channels_last:
                w = w.contiguous(memory_format=torch.channels_last)
            w_abs = w.abs()
            if k != 1.0:
                w, w_abs = w * k, w_abs * k
            c = F.conv2d(c, w, b, *args)
            r = F.conv2d(r, w_abs, None, *args)
            k = 1.0
        elif kind is nn.Linear:
            w, b = layer.weight, layer.bias
            bn = layers[i + 1] if following is nn.BatchNorm1d and c.dim() == 2 else None
            i += bn is not None
            if C is not None and i == n - 1 and c.dim() == 2:
                # Elision: the margin rows of C go through the last layer as one per-sample matrix.
                if bn is not None:
                    w, b = _fold_batchnorm(w, b, bn)
                w = torch.matmul(C, w * k if k != 1.0 else w)  # (B, M, F)
                c = torch.bmm(w, c.unsqueeze(-1)).squeeze(-1)
                if b is not None:
                    c = c + torch.matmul(C, b)
                r = torch.bmm(w.abs(), r.unsqueeze(-1)).squeeze(-1)
                folded = True
            elif w.numel() <= c.shape[0] * w.shape[0]:
                # Weights smaller than the outputs: fold the BatchNorm and the factor k into them.
                if bn is not None:
                    w, b = _fold_batchnorm(w, b, bn)
                w_abs = w.abs()
                if k != 1.0:
                    w, w_abs = w * k, w_abs * k
                c = F.linear(c, w, b)
                r = F.linear(r, w_abs)
            else:
                # Outputs smaller than the weights (the wide flatten-to-hidden layer): scale the outputs.
                scale = torch.full((w.shape[0],), k, dtype=w.dtype, device=w.device)
                shift = torch.zeros_like(scale) if b is None else b
                if bn is not None:
                    bn_scale, bn_shift = batchnorm_affine(bn)
                    scale, shift = scale * bn_scale, shift * bn_scale + bn_shift
                c = torch.addcmul(shift, F.linear(c, w), scale)
                r = F.linear(r, w.abs()) * scale.abs()
            k = 1.0
        elif kind is nn.ReLU:
            if k != 1.0:
                c, r, k = c * k, r * k, 1.0
            lo = c - r
            # c is always a tensor created here by an op that does not save its output for backward
            # (autograd's version counter would raise otherwise), so it can become hi in place.
            hi = c.add_(r)
            preact.append((lo, hi))
            if inplace and (r.is_contiguous() or _is_channels_last(r)):
                # Reuse r's buffer (ours, no longer needed) so each ReLU allocates 2 tensors, not 4 (fresh
                # CPU allocations cost page faults): relu(l) goes there, relu(u) - relu(l) into relu(u)'s,
                # then relu(u) + relu(l) = (relu(u) - relu(l)) + 2 relu(l) back into the first.
                rl = torch.clamp(lo, min=0, out=r)
                r = F.relu(hi).sub_(rl)
                c = torch.add(r, rl, alpha=2, out=rl)
            else:  # relu saves its output for backward: nothing in place
                lo, hi = F.relu(lo), F.relu(hi)
                r = hi - lo
                c = hi + lo
            k = 0.5
        elif kind is nn.BatchNorm1d or kind is nn.BatchNorm2d:
            scale, shift = batchnorm_affine(layer)
            c = torch.addcmul(_channel_view(shift, c.dim()), c, _channel_view(scale * k, c.dim()))
            r = r * _channel_view(scale.abs() * k, r.dim())
            k = 1.0
        elif kind is nn.Flatten or kind is nn.AvgPool2d:
            # Both are linear with non-negative coefficients, so they map (c, r) exactly as they map x.
            c = layer(c)
            r = layer(r)
        else:  # flatten_layers admits only the types above; a new SUPPORTED_LAYERS entry lands here
            raise _unsupported(layer, "no interval rule implemented")
        i += 1

    if k != 1.0:
        c, r = c * k, r * k
    if not folded:
        # The network does not end with a Linear over a flat vector: bound C @ logits from the box.
        c = torch.bmm(C, c.flatten(1).unsqueeze(-1)).squeeze(-1)
        r = torch.bmm(C.abs(), r.flatten(1).unsqueeze(-1)).squeeze(-1)
    return IBPBounds(lower=c - r, upper=c + r, preact=preact)
