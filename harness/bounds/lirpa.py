"""auto_LiRPA adapter: sound lower bounds of the margins z_y - z_j with IBP, CROWN-IBP, CROWN, alpha-CROWN.

auto_LiRPA 0.3 is imported through :mod:`harness.lirpa_compat` (it does not import on torch 2.14 /
numpy 2 otherwise). The specification matrix C (rows e_y - e_j, :func:`harness.bounds.spec.spec_matrix`)
is passed to ``compute_bounds``, so auto_LiRPA folds it into the last linear layer.

Two choices worth knowing:

* A leading :class:`harness.models.Normalize` layer is not given to auto_LiRPA: the input box is
  normalised instead (exact, since the layer is a per-channel monotone affine map; by monotonicity of
  IEEE rounding the normalised box even contains every value the float model computes). 0.3 cannot
  bound the Normalize layer with CROWN in its default "patches" conv mode for more than one sample
  (an assertion in ``BoundMul._multiply_by_const``: the (1, C, 1, 1) constant is not broadcast over
  the batch), and it costs two extra graph nodes otherwise.
* auto_LiRPA is given a private copy of the model, so building it never moves or re-wraps the
  caller's model, and alpha-CROWN's backward passes never put ``.grad`` on the caller's parameters.
  The copy is cached per model object and its weights and BatchNorm statistics are refreshed from the
  caller's model at every call, so training the model between calls is safe.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from harness.bounds import spec
from harness.lirpa_compat import BoundedModule, BoundedTensor, PerturbationLpNorm, safe_bound_opts
from harness.models import Normalize

LIRPA_METHODS: tuple[str, ...] = ("lirpa-ibp", "crown-ibp", "crown", "alpha-crown")

# auto_LiRPA's names ("CROWN" is its "backward"; "alpha-CROWN" its "CROWN-Optimized").
_LIRPA_NAME = {"lirpa-ibp": "IBP", "crown-ibp": "CROWN-IBP", "crown": "CROWN", "alpha-crown": "alpha-CROWN"}


@dataclass
class _Entry:
    """A BoundedModule built for one model object, valid while ``key`` stays the same."""
    key: tuple
    bounded: BoundedModule
    num_classes: int
    # False when some floating-point tensor of the model could not be mapped to the BoundedModule,
    # so refreshing by load_state_dict would leave it stale: then the entry is rebuilt every call.
    syncable: bool


_CACHE: "weakref.WeakKeyDictionary[nn.Module, _Entry]" = weakref.WeakKeyDictionary()


def _split_normalize(model: nn.Module) -> tuple[Normalize | None, nn.Module]:
    """(leading Normalize or None, the rest of the network)."""
    if isinstance(model, nn.Sequential) and len(model) > 1 and isinstance(model[0], Normalize):
        return model[0], model[1:]  # slicing keeps the state_dict key names ("1.weight", ...)
    return None, model


def _cache_key(model: nn.Module, x: Tensor) -> tuple:
    """What the BoundedModule depends on besides the tensor values: input shape, dtype, device, structure."""
    structure = tuple((name, type(m).__name__) for name, m in model.named_modules())
    tensors = tuple((name, tuple(t.shape), t.dtype) for name, t in model.state_dict().items())
    return (tuple(x.shape[1:]), x.dtype, x.device, structure, tensors)


def _build(model: nn.Module, x: Tensor, key: tuple) -> _Entry:
    _, body = _split_normalize(model)
    private = copy.deepcopy(body).eval()  # a slice is a new Sequential in training mode: eval() it
    private.requires_grad_(False)  # alpha-CROWN only needs gradients of its slopes
    dummy = torch.zeros((2,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    with torch.no_grad():
        out = private(dummy)
    if out.dim() != 2:
        raise ValueError(f"the model must output logits of shape (batch, classes), got {tuple(out.shape)}")
    bounded = BoundedModule(private, dummy, bound_opts=safe_bound_opts(), device=x.device)
    bounded.requires_grad_(False)
    bounded.eval()
    state = body.state_dict()
    unmapped = [k for k, v in state.items() if v.is_floating_point() and k not in bounded.node_name_map]
    return _Entry(key=key, bounded=bounded, num_classes=int(out.shape[1]), syncable=not unmapped)


def _bounded_module(model: nn.Module, x: Tensor) -> _Entry:
    """The cached BoundedModule for ``model``, rebuilt when needed, with current weights loaded."""
    key = _cache_key(model, x)
    entry = _CACHE.get(model)
    if entry is None or entry.key != key or not entry.syncable:
        entry = _build(model, x, key)
        _CACHE[model] = entry
    else:
        # Weights or BatchNorm statistics may have changed since the build (training).
        entry.bounded.load_state_dict(_split_normalize(model)[1].state_dict())
    return entry


def _check_model(model: nn.Module, x: Tensor) -> None:
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(f"the model must be in eval mode for bounding (call model.eval()); "
                         f"in training mode: {', '.join(training[:5])}{' ...' if len(training) > 5 else ''}")
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point() and t.dtype != x.dtype:
            raise ValueError(f"model dtype {t.dtype} differs from input dtype {x.dtype}; "
                             f"convert one of them (e.g. model.double() and x.double())")
        if t.device != x.device:
            raise ValueError(f"model is on {t.device} but inputs are on {x.device}")


def lirpa_margin_bounds(model: nn.Module, x: Tensor, y: Tensor, eps: float, method: str, *,
                        batch_size: int | None = None, alpha_iterations: int = 20,
                        alpha_lr: float = 0.1) -> Tensor:
    """Sound lower bounds of z_y - z_j for every wrong class j over the box B(x, eps) ∩ [0, 1].

    Args:
        model: a classifier in eval mode on the device and dtype of ``x`` (float32 or float64).
        x: inputs in [0, 1], shape (B, ...).
        y: labels, shape (B,).
        eps: l_inf radius (>= 0).
        method: one of :data:`LIRPA_METHODS`: ``lirpa-ibp`` (IBP), ``crown-ibp`` (IBP intermediate
            bounds, CROWN for the last layer), ``crown`` (CROWN everywhere), ``alpha-crown``
            (CROWN with the lower ReLU slopes optimised by Adam).
        batch_size: number of samples bounded at a time, to bound memory; None = all at once.
        alpha_iterations: alpha-CROWN optimisation iterations (auto_LiRPA's ``iteration``).
        alpha_lr: alpha-CROWN learning rate (auto_LiRPA's ``lr_alpha``).

    Returns:
        A detached tensor (B, K-1) on ``x``'s device and dtype; column i is the bound for the i-th wrong
        class in ascending order (the row order of :func:`harness.bounds.spec.spec_matrix`).

    Raises:
        ValueError: unknown method, model not in eval mode, dtype/device mismatch, eps < 0, inputs
            outside [0, 1], batch size mismatch between x and y, invalid batch_size / alpha options.
    """
    if method not in _LIRPA_NAME:
        raise ValueError(f"unknown bound method {method!r}; valid: {', '.join(LIRPA_METHODS)}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if method == "alpha-crown":
        if not isinstance(alpha_iterations, int) or alpha_iterations < 1:
            raise ValueError(f"alpha_iterations must be a positive int, got {alpha_iterations!r}")
        if not alpha_lr > 0:
            raise ValueError(f"alpha_lr must be > 0, got {alpha_lr!r}")
    spec.check_batch(x, y)
    x = x.detach()  # alpha-CROWN's internal backward passes must not reach the caller's graph
    lo, hi = spec.input_box(x, eps)
    _check_model(model, x)
    y = y.to(x.device)

    entry = _bounded_module(model, x)
    C = spec.spec_matrix(y, entry.num_classes, dtype=x.dtype)  # also validates the labels
    if x.shape[0] == 0:
        return C.new_zeros((0, entry.num_classes - 1))

    # Normalise the box instead of bounding the Normalize layer (see the module docstring).
    norm, _ = _split_normalize(model)
    if norm is not None:
        mean, std = norm.mean.to(x.dtype), norm.std.to(x.dtype)
        a, b, x = (lo - mean) / std, (hi - mean) / std, (x - mean) / std
        lo, hi = torch.minimum(a, b), torch.maximum(a, b)  # a negative std would swap the ends

    bounded = entry.bounded
    kwargs: dict[str, Any] = {"method": _LIRPA_NAME[method], "bound_lower": True, "bound_upper": False}
    if method == "alpha-crown":
        bounded.set_bound_opts({"optimize_bound_args": {"iteration": alpha_iterations, "lr_alpha": float(alpha_lr)}})
    step = x.shape[0] if batch_size is None else batch_size
    out = []
    for start in range(0, x.shape[0], step):
        sl = slice(start, start + step)
        ptb = PerturbationLpNorm(eps=float(eps), norm=float("inf"), x_L=lo[sl], x_U=hi[sl])
        bx = BoundedTensor(x[sl], ptb)
        if method == "alpha-crown":
            # alpha-CROWN optimises its slopes by gradient descent, so it needs autograd even when
            # the caller runs under no_grad. 0.3 also casts its best bounds to the default dtype
            # before the last update (optimized_bounds.py), which fails for float64 inputs under a
            # float32 default: make the default the input's dtype for the call (a no-op cast then).
            with torch.enable_grad(), _default_dtype(x.dtype):
                lower, _ = bounded.compute_bounds(x=(bx,), C=C[sl], **kwargs)
        else:
            with torch.no_grad():
                lower, _ = bounded.compute_bounds(x=(bx,), C=C[sl], **kwargs)
        out.append(lower.detach())
    return torch.cat(out, dim=0)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Temporarily set torch's default floating dtype (process-wide, restored on exit)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
