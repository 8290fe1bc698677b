"""auto_LiRPA adapter: sound lower bounds of the margins z_y - z_j with IBP, CROWN-IBP, CROWN, alpha-CROWN.

auto_LiRPA 0.3 is imported through :mod:`harness.bounds.lirpa_compat` (it does not import on torch 2.14 /
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
  caller's model at every call, so training the model between calls is safe. A call in which
  anything raises drops the cached copy (auto_LiRPA leaves per-pass state on its nodes), so the next
  call rebuilds it.

:func:`lirpa_training_margin_bounds` is the differentiable path for certified training (CROWN-IBP): its
BoundedModule reads the caller's own parameters, so gradients of the bounds reach them.

:func:`lirpa_relu_bounds` gives the intermediate bounds of the same passes (every ReLU's input),
for a complete verifier that fixes stable ReLUs.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from harness import threat_model
from harness.bounds import spec
from harness.bounds.lirpa_compat import BoundedModule, BoundedTensor, PerturbationLpNorm, safe_bound_opts
from harness.models import Normalize, plain_copy

__all__ = ["LIRPA_METHODS", "lirpa_margin_bounds", "lirpa_relu_bounds", "lirpa_training_margin_bounds"]

LIRPA_METHODS: tuple[str, ...] = ("lirpa-ibp", "crown-ibp", "crown", "alpha-crown", "lp-dual")

# auto_LiRPA's names ("CROWN" is its "backward"; "alpha-CROWN" its "CROWN-Optimized").
_LIRPA_NAME = {"lirpa-ibp": "IBP", "crown-ibp": "CROWN-IBP", "crown": "CROWN", "alpha-crown": "alpha-CROWN",
               "lp-dual": "CROWN"}

#: Wong & Kolter's (2018) LP dual, which equals Fast-Lin (Weng et al. 2018): CROWN's backward pass with
#: the same slope u / (u - l) for an unstable ReLU's lower and upper linear relaxation (auto_LiRPA's
#: ``relu = "same-slope"``), every intermediate neuron bounded by that pass (no IBP pre-selection of
#: unstable neurons, whose IBP bounds 0.3 would otherwise keep), and the input box B(x, eps) *not*
#: clipped to [0, 1]. It bounds a superset of the threat model, so its bounds are sound for it, only
#: looser; it exists to reproduce published LP-dual numbers ("lp-dual" of :data:`LIRPA_METHODS`).
_LP_DUAL_OPTS = {"relu": "same-slope", "sparse_intermediate_bounds": False,
                 "sparse_conv_intermediate_bounds": False}


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
# The LP dual's BoundedModules (built with other ReLU options), cached the same way.
_LP_CACHE: "weakref.WeakKeyDictionary[nn.Module, _Entry]" = weakref.WeakKeyDictionary()


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


def _build(model: nn.Module, x: Tensor, key: tuple, extra_opts: dict[str, Any] | None = None) -> _Entry:
    _, body = _split_normalize(model)
    private = copy.deepcopy(body).eval()  # a slice is a new Sequential in training mode: eval() it
    private.requires_grad_(False)  # alpha-CROWN only needs gradients of its slopes
    dummy = torch.zeros((2,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    with torch.no_grad():
        out = private(dummy)
    if out.dim() != 2:
        raise ValueError(f"the model must output logits of shape (batch, classes), got {tuple(out.shape)}")
    bounded = BoundedModule(private, dummy, bound_opts={**safe_bound_opts(), **(extra_opts or {})}, device=x.device)
    bounded.requires_grad_(False)
    bounded.eval()
    state = body.state_dict()
    unmapped = [k for k, v in state.items() if v.is_floating_point() and k not in bounded.node_name_map]
    return _Entry(key=key, bounded=bounded, num_classes=int(out.shape[1]), syncable=not unmapped)


def _bounded_module(model: nn.Module, x: Tensor, lp_dual: bool = False) -> _Entry:
    """The cached BoundedModule for ``model``, rebuilt when needed, with current weights loaded."""
    key = _cache_key(model, x)
    cache = _LP_CACHE if lp_dual else _CACHE
    entry = cache.get(model)
    if entry is None or entry.key != key or not entry.syncable:
        entry = _build(model, x, key, _LP_DUAL_OPTS if lp_dual else None)
        cache[model] = entry
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


def _check_options(method: str, batch_size: int | None, alpha_iterations: int, alpha_lr: float) -> None:
    if method not in _LIRPA_NAME:
        raise ValueError(f"unknown bound method {method!r}; valid: {', '.join(LIRPA_METHODS)}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if method == "alpha-crown":
        if not isinstance(alpha_iterations, int) or alpha_iterations < 1:
            raise ValueError(f"alpha_iterations must be a positive int, got {alpha_iterations!r}")
        if not alpha_lr > 0:
            raise ValueError(f"alpha_lr must be > 0, got {alpha_lr!r}")


def _bound_passes(model: nn.Module, x: Tensor, y: Tensor, eps: float, method: str, batch_size: int | None,
                  alpha_iterations: int, alpha_lr: float,
                  after_pass: Callable[[BoundedModule, slice], None] | None = None,
                  box: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Run ``method`` on each chunk of the batch; (B, K-1) margin lower bounds, detached.

    ``after_pass(bounded, chunk)`` runs after each chunk's pass, while the BoundedModule still holds
    that pass's intermediate bounds. Inputs must have been checked by :func:`_check_options`.
    """
    spec.check_batch(x, y)
    x = x.detach()  # alpha-CROWN's internal backward passes must not reach the caller's graph
    lo, hi = threat_model.input_box(x, eps) if box is None else _input_box(x, box)
    if method == "lp-dual":  # the published LP dual bounds the unclipped ball (see _LP_DUAL_OPTS)
        lo, hi = unclipped_box(x, eps)
    _check_model(model, x)
    y = y.to(x.device)

    try:
        entry = _bounded_module(model, x, lp_dual=method == "lp-dual")
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
            bounded.set_bound_opts({"optimize_bound_args": {"iteration": alpha_iterations,
                                                            "lr_alpha": float(alpha_lr)}})
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
            if after_pass is not None:
                with torch.no_grad():
                    after_pass(bounded, sl)
        return torch.cat(out, dim=0)
    except BaseException:
        # auto_LiRPA keeps per-pass state on its nodes (optimisation stage, alpha slopes and their
        # lookup tables, bounds). A pass that raises half-way leaves it set, and the next pass on the
        # same BoundedModule reuses it (seen: after alpha-CROWN's AssertionError every CROWN call
        # failed too). Drop the entry, whatever was raised, so the next call rebuilds it.
        _CACHE.pop(model, None)
        _LP_CACHE.pop(model, None)
        raise


def _input_box(x: Tensor, box: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """A caller's input box (``box=`` of the bound functions) checked: x's shape and dtype, x inside it.

    auto_LiRPA evaluates the network at x (its forward values pick nothing but the ReLU matching of
    :func:`lirpa_relu_bounds`), so any point of the box serves; the bounds hold over the whole box.
    """
    lo, hi = (t.detach().to(device=x.device, dtype=x.dtype) for t in box)
    if lo.shape != x.shape or hi.shape != x.shape:
        raise ValueError(f"box ends must have the shape of x {tuple(x.shape)}, got {tuple(lo.shape)} and {tuple(hi.shape)}")
    if not bool(((lo <= x) & (x <= hi)).all()):
        raise ValueError("x must lie inside the box [lo, hi]")
    return lo, hi


def lirpa_margin_bounds(model: nn.Module, x: Tensor, y: Tensor, eps: float, method: str, *,
                        batch_size: int | None = None, alpha_iterations: int = 20,
                        alpha_lr: float = 0.1, box: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Sound lower bounds of z_y - z_j for every wrong class j over the box B(x, eps) ∩ [0, 1].

    Args:
        model: a classifier in eval mode on the device and dtype of ``x`` (float32 or float64).
        x: inputs in [0, 1], shape (B, ...).
        y: labels, shape (B,).
        eps: l_inf radius (>= 0).
        method: one of :data:`LIRPA_METHODS`: ``lirpa-ibp`` (IBP), ``crown-ibp`` (IBP intermediate
            bounds, CROWN for the last layer), ``crown`` (CROWN everywhere), ``alpha-crown``
            (CROWN with the lower ReLU slopes optimised by Adam), ``lp-dual`` (Wong & Kolter's LP
            dual / Fast-Lin over the unclipped box B(x, eps): see ``_LP_DUAL_OPTS``).
        batch_size: number of samples bounded at a time, to bound memory; None = all at once.
        alpha_iterations: alpha-CROWN optimisation iterations (auto_LiRPA's ``iteration``).
        alpha_lr: alpha-CROWN learning rate (auto_LiRPA's ``lr_alpha``).
        box: (lo, hi) shaped like x: bound over this box instead of B(x, eps) ∩ [0, 1] (eps is then
            ignored); x must lie inside it (a general input box, e.g. a VNN-LIB property's).

    Returns:
        A detached tensor (B, K-1) on ``x``'s device and dtype; column i is the bound for the i-th wrong
        class in ascending order (the row order of :func:`harness.bounds.spec.spec_matrix`).

    Raises:
        ValueError: unknown method, model not in eval mode, dtype/device mismatch, eps < 0, inputs
            outside [0, 1], batch size mismatch between x and y, invalid batch_size / alpha options.
        Whatever auto_LiRPA raises; the model's cached BoundedModule is then discarded.
    """
    _check_options(method, batch_size, alpha_iterations, alpha_lr)
    return _bound_passes(model, x, y, eps, method, batch_size, alpha_iterations, alpha_lr, box=box)


def _relu_inputs(model: nn.Module, x: Tensor) -> list[Tensor]:
    """The input of every ``nn.ReLU`` call of ``model(x)``, in call order (a module called twice: twice)."""
    seen: list[Tensor] = []

    def record(module: nn.Module, args: tuple) -> None:
        seen.append(args[0].detach().clone())  # before the call: an in-place ReLU overwrites its input

    handles = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _same_values(a: Tensor, b: Tensor) -> bool:
    """a equals b up to float rounding (both compute the same pre-activation at the same input)."""
    if a.shape != b.shape:
        return False
    scale = 1.0 + float(b.abs().max()) if b.numel() else 1.0
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


def _match_relu_nodes(bounded: BoundedModule, expected: list[Tensor]) -> list[Any]:
    """auto_LiRPA's ReLU node for each of the model's ReLU calls, matched by the value of the input.

    At the bounded chunk's (normalised) inputs, the input of each BoundRelu node (auto_LiRPA's own
    forward through its graph) must equal the input one ReLU call of the model received (the
    model's forward, Normalize included), and no other. This needs no names and checks the
    Normalize split at every call. Raises RuntimeError when the match is not one-to-one.
    """
    nodes = list(bounded.relus)
    if len(nodes) != len(expected):
        raise RuntimeError(f"auto_LiRPA's graph has {len(nodes)} ReLU node(s) but the model made "
                           f"{len(expected)} nn.ReLU call(s); ReLUs applied functionally (F.relu, "
                           f"torch.relu) have no module to report bounds for: use nn.ReLU modules")
    values = [bounded.get_forward_value(n.inputs[0]) for n in nodes]
    matched = []
    for i, want in enumerate(expected):
        hits = [j for j, v in enumerate(values) if _same_values(v, want)]
        if len(hits) != 1:
            what = "no" if not hits else f"{len(hits)} ({', '.join(nodes[j].name for j in hits)})"
            raise RuntimeError(f"cannot map the model's ReLU call #{i} (input shape {tuple(want.shape)}) to "
                               f"auto_LiRPA's graph: its input matches {what} ReLU node inputs at these "
                               f"inputs; bound other inputs, or a model whose ReLU inputs differ")
        matched.append(hits[0])
    if len(set(matched)) != len(matched):
        raise RuntimeError(f"ambiguous ReLU mapping: model ReLU calls map to auto_LiRPA nodes "
                           f"{[nodes[j].name for j in matched]} (not one-to-one)")
    for j in matched:
        if getattr(nodes[j].inputs[0], "lower", None) is None:
            raise RuntimeError(f"auto_LiRPA computed no bounds for the input of ReLU node {nodes[j].name} "
                               f"(not on the path to the output?)")
    return [nodes[j] for j in matched]


def lirpa_relu_bounds(model: nn.Module, x: Tensor, y: Tensor, eps: float, method: str = "crown", *,
                      batch_size: int | None = None, alpha_iterations: int = 20,
                      alpha_lr: float = 0.1, box: tuple[Tensor, Tensor] | None = None,
                      return_margins: bool = False):
    """Bounds of every ReLU's input over B(x, eps) ∩ [0, 1], as auto_LiRPA computed them in a pass.

    For a complete verifier that fixes stable ReLUs. The pass is the one :func:`lirpa_margin_bounds`
    runs for ``method`` with the margin specification of ``y``: ``crown`` gives CROWN bounds (each
    layer bounded by back-substitution to the input; auto_LiRPA refines only the neurons its own IBP
    finds unstable, the others keep the IBP bounds); ``alpha-crown`` gives, per ReLU input, the
    intersection of the bounds of the iterations in which the margin bound improved (0.3 keeps these
    "best intermediate bounds"; they start from CROWN's, so they are never looser, and depend on
    ``y``); ``crown-ibp`` and ``lirpa-ibp`` give auto_LiRPA's IBP bounds. CROWN is not guaranteed
    tighter than IBP neuron by neuron, and these are not intersected with any IBP bounds. 0.3 refines,
    for a whole chunk of ``batch_size`` samples, every neuron its IBP finds unstable in any sample
    of the chunk: a sample's bounds of neurons that are IBP-stable for it can therefore depend on
    which samples share its chunk (all of them sound).

    Returns:
        One (lower, upper) pair per ``nn.ReLU`` call of ``model`` in forward order, each shaped as that
        ReLU's input ((B, C, H, W) after a conv, (B, F) after a linear layer), the shapes
        :func:`harness.bounds.ibp.ibp_bounds` gives in ``.preact``; detached, on ``x``'s device and
        dtype. Like every bound here they are computed in the model's dtype and carry its rounding
        error: a caller deciding a ReLU's phase from them must allow for it (see
        :mod:`harness.bounds`, the floating-point soundness rule).

    Raises:
        ValueError: as :func:`lirpa_margin_bounds`.
        RuntimeError: the model's ReLU calls cannot be matched one-to-one with auto_LiRPA's ReLU nodes.

    ``box``: as :func:`lirpa_margin_bounds`. ``return_margins``: return ``(margin lower bounds, relu
    bounds)`` of the same pass (what :func:`lirpa_margin_bounds` would return), for a caller that
    needs both: one alpha-CROWN optimisation instead of two.
    """
    _check_options(method, batch_size, alpha_iterations, alpha_lr)
    spec.check_batch(x, y)
    if box is None:
        threat_model.input_box(x, eps)  # validates eps and the input range before the model runs
    else:
        _input_box(x, box)
    _check_model(model, x)
    x = x.detach()
    expected = _relu_inputs(model, x)
    chunks: list[list[tuple[Tensor, Tensor]]] = []

    def collect(bounded: BoundedModule, sl: slice) -> None:
        nodes = _match_relu_nodes(bounded, [e[sl] for e in expected])
        chunks.append([(n.inputs[0].lower.detach().clone(), n.inputs[0].upper.detach().clone())
                       for n in nodes])

    margins = _bound_passes(model, x, y, eps, method, batch_size, alpha_iterations, alpha_lr, after_pass=collect,
                            box=box)
    if return_margins:
        return margins, _joined(chunks, expected, x)
    return _joined(chunks, expected, x)


def _joined(chunks: list[list[tuple[Tensor, Tensor]]], expected: list[Tensor], x: Tensor) -> list[tuple[Tensor, Tensor]]:
    if not chunks:  # empty batch: empty bounds of the right shapes
        return [(e.clone(), e.clone()) for e in expected]
    return [(torch.cat([c[i][0] for c in chunks]).to(device=x.device, dtype=x.dtype),
             torch.cat([c[i][1] for c in chunks]).to(device=x.device, dtype=x.dtype))
            for i in range(len(expected))]


def unclipped_box(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The box B(x, eps) *not* intersected with [0, 1] (the LP dual's), rounded outward in ``x``'s dtype.

    Each end is computed in float64 and moved one ulp outward where the rounding to ``x``'s dtype went
    inward (or may have), so the box contains the exact real one.
    """
    threat_model.check(x, eps)
    lo64, hi64 = x.double() - float(eps), x.double() + float(eps)
    if x.dtype == torch.float64:
        inf = torch.tensor(float("inf"), dtype=torch.float64, device=x.device)
        return torch.nextafter(lo64, -inf), torch.nextafter(hi64, inf)
    lo, hi = lo64.to(x.dtype), hi64.to(x.dtype)
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    lo = torch.where(lo.double() >= lo64, torch.nextafter(lo, -inf), lo)
    hi = torch.where(hi.double() <= hi64, torch.nextafter(hi, inf), hi)
    return lo, hi


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Temporarily set torch's default floating dtype (process-wide, restored on exit)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# ---- the differentiable path, for training ------------------------------------------------------------

@dataclass
class _TrainingEntry:
    """A training-mode BoundedModule for one model object and input shape, and where its parameters sit."""
    key: tuple
    bounded: BoundedModule
    num_classes: int
    slots: list[tuple[str, nn.Module, str]]   # (the model's parameter name, auto_LiRPA node, attribute)


_TRAINING_CACHE: "weakref.WeakKeyDictionary[nn.Module, _TrainingEntry]" = weakref.WeakKeyDictionary()


def _training_module(model: nn.Module, x: Tensor) -> _TrainingEntry:
    """A BoundedModule in training mode whose parameter nodes hold ``model``'s own parameters.

    Built (once per model and input shape) from :func:`harness.models.plain_copy` of the network after
    its Normalize layer, since auto_LiRPA traces the network and must see the class's own BatchNorm,
    not the per-batch one :func:`harness.models.frozen_batch_stats` patches in. Then every parameter
    node is pointed at the caller's ``nn.Parameter`` (the same object, not a copy; again at every call,
    so a model whose parameters were replaced is still the one bounded): the bounds are functions of
    the caller's weights and backpropagate into them, while BatchNorm's running statistics stay the
    private copy's, so a bound pass never updates the caller's (its clean pass did that once). In
    training mode auto_LiRPA normalises with the statistics of its forward pass at the given point,
    the clean ``x``: the clean pass's statistics, as CTBench does.
    """
    _, body = _split_normalize(model)
    key = _cache_key(body, x)
    entry = _TRAINING_CACHE.get(model)
    if entry is None or entry.key != key:
        private = plain_copy(body).train()
        dummy = torch.zeros((2,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
        with torch.no_grad():
            out = private(dummy)
        bounded = BoundedModule(private, dummy, bound_opts=safe_bound_opts(), device=x.device)
        slots = []
        for name, _ in body.named_parameters():
            node_param = bounded.node_name_map.get(name)
            if node_param is None:
                raise RuntimeError(f"auto_LiRPA's graph has no node for parameter {name!r}; cannot train through it")
            node_name, _, attr = node_param.rpartition(".")
            slots.append((name, bounded._modules[node_name], attr))
        entry = _TrainingEntry(key=key, bounded=bounded, num_classes=int(out.shape[1]), slots=slots)
        _TRAINING_CACHE[model] = entry
    params = dict(body.named_parameters())
    for name, node, attr in entry.slots:
        node._parameters[attr] = params[name]
    entry.bounded.train()
    return entry


def lirpa_training_margin_bounds(model: nn.Module, x: Tensor, y: Tensor, lower: Tensor, upper: Tensor,
                                 method: str = "crown-ibp") -> Tensor:
    """Differentiable lower bounds of z_y - z_j (every wrong class j) over the box [lower, upper] ∋ x.

    For certified training: ``model`` in training mode (inside :func:`harness.models.frozen_batch_stats`
    or not), gradients flow from the bounds into its parameters. ``x`` is the point the network's
    BatchNorm statistics are taken at (the clean input); it must lie in the box. The bounds are as
    sound as auto_LiRPA's for the network auto_LiRPA sees, which normalises BatchNorm with the batch
    statistics at ``x`` (in training mode) - the same function the training step's other passes use.

    Args:
        method: ``crown-ibp`` (IBP intermediate bounds, CROWN back-substitution for the margins) or
            ``lirpa-ibp``; CROWN and alpha-CROWN are certification-time methods, refused here.

    Returns:
        A (B, K-1) tensor in the order of :func:`harness.bounds.spec.spec_matrix`, in the autograd graph.
    """
    if method not in ("crown-ibp", "lirpa-ibp"):
        raise ValueError(f"training bounds support 'crown-ibp' and 'lirpa-ibp', got {method!r}")
    spec.check_batch(x, y)
    if lower.shape != x.shape or upper.shape != x.shape:
        raise ValueError(f"the box must have x's shape {tuple(x.shape)}, got {tuple(lower.shape)} and "
                         f"{tuple(upper.shape)}")
    x = x.detach()
    try:
        entry = _training_module(model, x)
        C = spec.spec_matrix(y.to(x.device), entry.num_classes, dtype=x.dtype)
        norm, _ = _split_normalize(model)
        lo, hi = lower.detach(), upper.detach()
        if norm is not None:  # the box normalised instead of the layer bounded (module docstring)
            mean, std = norm.mean.to(x.dtype), norm.std.to(x.dtype)
            a, b, x = (lo - mean) / std, (hi - mean) / std, (x - mean) / std
            lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        # A forward pass first: auto_LiRPA's training-mode BatchNorm bounds with the batch statistics its
        # last forward pass stored (compute_bounds does not run one), as its own training examples do.
        entry.bounded(x)
        ptb = PerturbationLpNorm(norm=float("inf"), x_L=lo, x_U=hi)
        lower_bound, _ = entry.bounded.compute_bounds(x=(BoundedTensor(x, ptb),), C=C, method=_LIRPA_NAME[method],
                                                      bound_lower=True, bound_upper=False)
        return lower_bound
    except BaseException:
        _TRAINING_CACHE.pop(model, None)  # per-pass state left on the nodes (see _bound_passes)
        raise
