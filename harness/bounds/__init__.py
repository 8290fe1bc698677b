"""One interface for every certifier: lower bounds of the margins z_y - z_j over an l_inf box.

``margin_lower_bounds`` returns the bounds; ``certify`` turns them into verdicts. ``"ibp"`` is the
project's own IBP (:mod:`harness.bounds.ibp`, specification folded into the last layer); the other
methods go through the auto_LiRPA adapter (:mod:`harness.bounds.lirpa`), imported only when asked
for, so that importing this package does not import auto_LiRPA.

Floating-point soundness rule (decided in one place: :func:`_verdicts_from_bounds`)
--------------------------------------------------------------------------------
Bounds are computed in the model's dtype (float32 normally). Rounding error accumulates in
proportion to the magnitudes of the quantities the computation passes through, so the tolerance
is relative to an envelope of them. For each sample, with m its smallest margin lower bound:

    scale = max( max_j |lower_j|           (the method's margin bounds),
                 max_k |z_k(x)|            (the clean logits),
                 max |l|, |u| over the own-IBP bounds of every ReLU input and every margin
                                           (computed for every method; auto_LiRPA's intermediate
                                           bounds are not exposed, and CROWN's are usually tighter) )
    tol   = FP32_ABS_TOL + FP32_REL_TOL * scale      (1e-5 + 1e-4 * scale)

- m >  tol: certified from the float32 result;
- m < -tol: not certified, without recomputation ("not certified" is always sound);
- |m| <= tol: recomputed with the same method on a float64 copy of the model
  (``copy.deepcopy(model).double()``: the same real-valued network, every float32 parameter being
  exact in float64) and certified iff the float64 bound exceeds FP64_ABS_TOL + FP64_REL_TOL * scale
  (1e-12 + 1e-9 * scale); a float64 model takes this float64 rule directly.

The own IBP also rounds its float32 input box outward, so it bounds a box containing the exact one.
Residual assumption: the accumulated rounding error of a bound is below 1e-4 (float32; ~1,700
units in the last place) or 1e-9 (float64; ~10^7 ulps, against the ~1e-13 relative error seen)
times that scale. It can fail only if single dot products cancel terms far larger than every bound
and logit (e.g. weights ~1e4 times larger than any activation they produce). What is certified is
the real-valued function defined by the parameters, not float32 inference itself.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from dataclasses import dataclass

import torch
from torch import nn

from harness import threat_model
from harness.bounds.ibp import IBPBounds, UnsupportedLayerError, flatten_layers, ibp_bounds
from harness.bounds.spec import check_batch, spec_matrix
from harness.threat_model import outward_box

__all__ = [
    "METHODS", "FP32_ABS_TOL", "FP32_REL_TOL", "FP64_ABS_TOL", "FP64_REL_TOL", "Verdicts",
    "IBPBounds", "UnsupportedLayerError", "certify", "ibp_bounds", "margin_lower_bounds",
    "flatten_layers", "fp_tolerance", "rounding_scale",
]

#: Every certifier behind this interface; all but "ibp" are auto_LiRPA's (harness.bounds.lirpa).
METHODS: tuple[str, ...] = ("ibp", "lirpa-ibp", "crown-ibp", "crown", "alpha-crown", "lp-dual")

#: float32 verdicts: a margin bound within FP32_ABS_TOL + FP32_REL_TOL * scale of 0 is recomputed in float64.
FP32_ABS_TOL = 1e-5
FP32_REL_TOL = 1e-4
#: float64 verdicts: certified only above FP64_ABS_TOL + FP64_REL_TOL * scale.
FP64_ABS_TOL = 1e-12
FP64_REL_TOL = 1e-9

_TOLERANCES = {torch.float32: (FP32_ABS_TOL, FP32_REL_TOL), torch.float64: (FP64_ABS_TOL, FP64_REL_TOL)}


@dataclass
class Verdicts:
    """Per-sample outcome of :func:`certify`.

    certified: (B,) bool. min_margin: (B,) float64, the smallest margin lower bound the verdict used
    (the float64 one where recomputed). recomputed: (B,) bool, samples that needed float64.
    """

    certified: torch.Tensor
    min_margin: torch.Tensor
    recomputed: torch.Tensor


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's parameters and buffers (float32 for a model without any)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def fp_tolerance(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The rounding band around 0 of the soundness rule for bounds computed in ``dtype``."""
    abs_tol, rel_tol = _TOLERANCES[dtype]
    return abs_tol + rel_tol * scale


def _validate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, method: str,
              batch_size: int | None = None) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown certification method {method!r}; valid: {', '.join(METHODS)}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    check_batch(x, y)
    threat_model.check(x, eps)
    training = [type(m).__name__ for m in model.modules() if m.training]
    if training:
        raise ValueError(f"certification needs the model in eval mode (BatchNorm uses running statistics); "
                         f"call model.eval() first (in training mode: {', '.join(sorted(set(training)))})")
    dtype = model_dtype(model)
    if dtype not in _TOLERANCES:
        raise ValueError(f"certification supports float32 and float64 models, got {dtype}")


def _ibp_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, num_classes: int,
              batch_size: int | None, with_magnitude: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Own-IBP margin lower bounds (B, K-1) and, if asked, each sample's largest IBP magnitude.

    The magnitude is max |bound| over every ReLU input and every margin bound of the sample: an
    envelope of the intermediate quantities the computation passes through (the rounding scale).
    """
    dtype = model_dtype(model)
    lowers, mags = [], []
    step = batch_size or max(x.shape[0], 1)
    for start in range(0, x.shape[0], step):
        xb, yb = x[start:start + step], y[start:start + step]
        lo, hi = outward_box(xb, eps, dtype)
        b = ibp_bounds(model, lo, hi, spec_matrix(yb, num_classes, dtype).to(x.device))
        lowers.append(b.lower)
        if with_magnitude:
            # max(|l|, |u|) over a box with l <= u is max(max u, -min l): two reductions, no abs pass.
            # (Reducing over dims, not flatten(1), avoids copying channels-last tensors.)
            parts = []
            for lo_b, up_b in b.preact + [(b.lower, b.upper)]:
                dims = tuple(range(1, up_b.dim()))
                parts += [up_b.detach().amax(dims), -lo_b.detach().amin(dims)]
            mags.append(torch.stack(parts).amax(0))
    if not lowers:
        empty = torch.zeros(0, device=x.device, dtype=dtype)
        return empty.view(0, 1).expand(0, num_classes - 1), empty if with_magnitude else None
    return torch.cat(lowers), torch.cat(mags) if with_magnitude else None


def _bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, method: str, num_classes: int,
            batch_size: int | None, alpha_iterations: int, alpha_lr: float,
            with_magnitude: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(margin lower bounds, rounding-scale magnitude or None) in the model's dtype; no validation."""
    if method == "ibp":  # the own IBP builds its box from x as given (rounded outward, not x rounded)
        return _ibp_pass(model, x, y, eps, num_classes, batch_size, with_magnitude)
    x = x.to(model_dtype(model))
    from harness.bounds import lirpa  # lazy: auto_LiRPA is slow to import and patches torch

    lower = lirpa.lirpa_margin_bounds(model, x, y, eps, method, batch_size=batch_size,
                                      alpha_iterations=alpha_iterations, alpha_lr=alpha_lr)
    magnitude = None
    if with_magnitude:
        try:  # an own-IBP pass costs ~2 forwards, little beside any auto_LiRPA method
            with torch.no_grad():
                magnitude = _ibp_pass(model, x, y, eps, num_classes, batch_size, True)[1]
        except UnsupportedLayerError:
            magnitude = None  # a layer only auto_LiRPA knows: the scale falls back to bounds and logits
    return lower, magnitude


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    """Number of logits: the last Linear's out_features, else one forward on a single input."""
    last = flatten_layers(model)[-1] if type(model) is nn.Sequential else None
    if type(last) is nn.Linear:
        return last.out_features
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def margin_lower_bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, method: str = "ibp", *,
                        batch_size: int | None = None, alpha_iterations: int = 20,
                        alpha_lr: float = 0.1) -> torch.Tensor:
    """Sound lower bounds (B, K-1) of z_y - z_j (j ascending, skipping y) over B(x, eps) ∩ [0, 1].

    ``method`` is one of :data:`METHODS`. The model must be in eval mode. Bounds are in the model's
    dtype and carry its rounding error; :func:`certify` applies the floating-point rule to them.
    ``batch_size`` splits the batch (memory); ``alpha_*`` only matter for alpha-CROWN. Gradients
    flow through the own IBP (it is not wrapped in no_grad).
    """
    _validate(model, x, y, eps, method, batch_size)
    num_classes = _num_classes(model, x.to(model_dtype(model))) if method == "ibp" else 0
    return _bounds(model, x, y, float(eps), method, num_classes, batch_size, alpha_iterations, alpha_lr)[0]


def _logits(model: nn.Module, x: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    step = batch_size or max(x.shape[0], 1)
    with torch.no_grad():
        return torch.cat([model(x[s:s + step]) for s in range(0, x.shape[0], step)])


def _envelope(lower: torch.Tensor, magnitude: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """The rule's per-sample scale (float64): max(|margin lower bounds|, |clean logits|, IBP magnitude)."""
    parts = [lower.detach().abs().amax(1), logits.detach().abs().amax(1)]
    if magnitude is not None:
        parts.append(magnitude.detach())
    return torch.stack([p.double() for p in parts]).amax(0)


def _verdicts_from_bounds(lower: torch.Tensor, magnitude: torch.Tensor | None, logits: torch.Tensor,
                          dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """THE soundness rule: (certified, uncertain, min_margin as float64) for bounds computed in ``dtype``.

    scale = max(|margin lower bounds|, |clean logits|, IBP magnitude of the ReLU inputs and margins);
    certified iff min margin > tol(scale); uncertain (to recompute in float64) iff |min margin| <= tol,
    except in float64 where the band around 0 is simply not certified.
    """
    scale = _envelope(lower, magnitude, logits)
    tol = fp_tolerance(scale, dtype)
    min_margin = lower.detach().amin(1).double()
    certified = min_margin > tol
    if dtype == torch.float64:
        uncertain = torch.zeros_like(certified)
    else:
        uncertain = min_margin.abs() <= tol
    return certified, uncertain, min_margin


def certify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, method: str = "ibp", *,
            batch_size: int | None = None, alpha_iterations: int = 20, alpha_lr: float = 0.1) -> Verdicts:
    """Certify each sample at ``eps`` with ``method``, applying the floating-point soundness rule.

    See the module docstring for the rule. The model must be in eval mode; inputs in [0, 1].
    ``batch_size`` splits the batch; ``alpha_*`` are alpha-CROWN's optimisation settings.
    """
    _validate(model, x, y, eps, method, batch_size)
    eps = float(eps)
    dtype = model_dtype(model)
    kw = dict(batch_size=batch_size, alpha_iterations=alpha_iterations, alpha_lr=alpha_lr, with_magnitude=True)
    if x.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.bool, device=x.device)
        return Verdicts(empty, torch.zeros(0, dtype=torch.float64, device=x.device), empty.clone())
    logits = _logits(model, x.to(dtype), batch_size)
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise ValueError(f"certification needs at least 2 classes, the model has {num_classes} output(s)")
    with _grad_mode(method):
        lower, magnitude = _bounds(model, x, y, eps, method, num_classes, **kw)
    certified, uncertain, min_margin = _verdicts_from_bounds(lower, magnitude, logits, dtype)
    recomputed = uncertain.clone()
    if uncertain.any():
        idx = uncertain.nonzero().squeeze(1)
        model64 = copy.deepcopy(model).double()
        x64 = x[idx].double()
        logits64 = _logits(model64, x64, batch_size)
        with _grad_mode(method):
            lower64, magnitude64 = _bounds(model64, x64, y[idx], eps, method, num_classes, **kw)
        cert64, _, mm64 = _verdicts_from_bounds(lower64, magnitude64, logits64, torch.float64)
        certified[idx] = cert64
        min_margin[idx] = mm64
    return Verdicts(certified=certified, min_margin=min_margin, recomputed=recomputed)


def _grad_mode(method: str) -> contextlib.AbstractContextManager:
    """No autograd graph for the own IBP; the auto_LiRPA adapter manages grad itself (alpha-CROWN needs it)."""
    return torch.no_grad() if method == "ibp" else contextlib.nullcontext()


def rounding_scale(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                   margin_lower: torch.Tensor | None = None) -> torch.Tensor:
    """The soundness rule's scale for each sample, (B,) float64: what :func:`certify` uses.

    max(|margin lower bounds|, |clean logits|, own-IBP magnitude of every ReLU input and margin).
    The margin bounds are the own IBP's, and also ``margin_lower`` (B, K-1) when a caller has
    tighter ones from another method (their finite entries; the envelope only grows, so the band
    stays conservative).
    ``fp_tolerance(rounding_scale(...), torch.float32)`` is then the band within which a float32
    bound of this sample may be off. The model must be in eval mode; inputs in [0, 1].
    """
    _validate(model, x, y, eps, "ibp")
    dtype = model_dtype(model)
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64, device=x.device)
    logits = _logits(model, x.to(dtype), None)
    with torch.no_grad():
        lower, magnitude = _ibp_pass(model, x, y, float(eps), logits.shape[1], None, True)
    scale = _envelope(lower, magnitude, logits)
    if margin_lower is not None:
        if margin_lower.shape != lower.shape:
            raise ValueError(f"margin_lower must have shape {tuple(lower.shape)} (batch, classes - 1), "
                             f"got {tuple(margin_lower.shape)}")
        mag = margin_lower.detach().double().abs().to(scale.device)
        mag = torch.where(torch.isfinite(mag), mag, torch.zeros_like(mag))  # -inf = "no bound", not a magnitude
        scale = torch.maximum(scale, mag.amax(1))
    return scale
