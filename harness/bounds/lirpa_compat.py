"""Import auto_LiRPA 0.3 on a modern torch / numpy without editing site-packages.

auto_LiRPA 0.3 (2022) was written for torch 1.8-1.12 and numpy 1.x. On torch 2.14 / numpy 2 it
fails in five ways (see ``docs/auto_lirpa.md``), one of them silently; on CUDA its
TorchScript helpers fail, and 0.3 itself has an alpha-CROWN bug. This module fixes each one at
runtime, **only when a check shows the fix is needed**, so where one is not needed it changes
nothing. Project code must import auto_LiRPA only through here::

    from harness.bounds.lirpa_compat import BoundedModule, BoundedTensor, PerturbationLpNorm

The fixes, as short names recorded in :data:`APPLIED_PATCHES` when applied:

``np-arraysetops``  numpy >= 2 removed ``numpy.lib.arraysetops``; ``operators/base.py`` imports
                    ``isin`` from it. A shim module is placed in ``sys.modules`` for the duration of
                    the import only (``base.py`` keeps its own reference to ``isin``).
``np-bool``         ``perturbations.py`` uses ``np.bool`` (removed in numpy 1.24, re-added as an
                    alias of ``np.bool_`` in numpy 2.0). Set to ``bool`` only when missing.
``onnx-optimize-graph`` / ``onnx-set-opset``
                    ``parse_graph.py`` imports ``torch.onnx.utils._optimize_graph`` and
                    ``torch.onnx.symbolic_helper._set_opset_version``; torch >= 2.9 moved the
                    TorchScript exporter to ``torch.onnx._internal.torchscript_exporter``. The
                    missing names are provided on torch's modules for the import only.
``no-torchscript``  auto_LiRPA's ``@torch.jit.script`` helpers fail on CUDA in the TorchScript
                    interpreter (torch 2.11 + CUDA 13, H100: "CUDA driver error: invalid argument",
                    CROWN on CNN7 at batch 8; batch 6 ran), and ``torch.jit.script`` is deprecated
                    on torch 2.14. Cost on CUDA: no TorchScript fusion, so more memory (CROWN, CNN7,
                    batch 6: 48.8 instead of 35.7 GiB peak). While auto_LiRPA's modules
                    execute, ``torch.jit.script`` returns auto_LiRPA's own functions unchanged (what
                    ``PYTORCH_JIT=0`` does, for auto_LiRPA only); afterwards it is restored. The
                    11 functions of 0.3 (kept in ``_ORIGINALS``): ``BoundActivation.bound_forward_w``,
                    ``.bound_forward_b``, ``BoundRelu._relu_upper_bound`` (operators/activation.py),
                    ``ClampedMultiplication.clamp_mutiply_forward``, ``.clamp_mutiply_backward``
                    (clampmult.py), ``CutModule.jit_arelu_lA``, ``.jit_arelu_lbias``,
                    ``.jit_arelu_uA``, ``.jit_arelu_ubias`` (cut_ops.py),
                    ``BoundLinear.bound_forward_mul`` (linear.py), ``BoundMaxPool.jit_mutiply``
                    (pooling.py). Check: ``torch.jit.script`` compiles (off under ``PYTORCH_JIT=0``),
                    on every device, since one process may use both: on the CPU the Python
                    versions give the same values bit for bit (autograd's derivatives of them can
                    differ from TorchScript's in the last bits, so alpha-CROWN may end an ulp apart).
``node-getitem``    ``parse_graph.py`` reads node attributes as ``node[name]``; old torch added
                    ``torch._C.Node.__getitem__`` (in ``torch/onnx/utils.py``), new torch does not.
                    Needed at every graph parse, so it stays installed.
``named-members``   ``BoundedModule._named_members`` overrides torch's method without the
                    ``remove_duplicate`` keyword, so ``.parameters()`` raises TypeError.
``relu-alpha-clamp`` Silent: on torch 2.14 the gradient of ``torch.clamp(x, 0., 1.)`` at exactly 0
                    and 1 is 0. alpha-CROWN starts every ReLU slope at 0 or 1 and clamps it in
                    ``BoundRelu._relu_mask_alpha``, so no slope moves and alpha-CROWN returns the
                    CROWN bounds. That clamp is replaced by one that passes the gradient on the
                    closed interval [0, 1], as torch <= 2.13 did.
``relu-empty-sparse-alpha``
                    A bug of 0.3 (any torch): alpha-CROWN raises AssertionError in
                    ``BoundRelu._backward_relaxation`` when CROWN finds no unstable neuron in a later
                    layer's pre-activation but auto_LiRPA's IBP, which picks the neurons to refine,
                    finds some (small eps, narrow layers). The slopes for that layer are then a
                    sparse-spec alpha with only its reserved slot, spec size 1, which 0.3 takes for a
                    shared alpha. ``BoundRelu.init_opt_parameters`` is wrapped to pad such an alpha
                    with one unused slot (see :func:`_pad_empty_sparse_spec_alpha`); 0.3.1 removed the
                    size test instead. Check: the size test and the ``sparsity + 1`` allocation are
                    in the installed source.

Not a patch but required of every caller: :func:`safe_bound_opts` (``sparse_features_alpha``
off), which avoids a shape mismatch in 0.3's ``reconstruct_full_alpha`` when > ~90% of a conv
layer's ReLUs are unstable.

Import hygiene: the ``torch.jit.script is deprecated`` FutureWarning raised by the need-check of
``no-torchscript`` or, without that patch, by auto_LiRPA's decorators is silenced (that warning
only); auto_LiRPA's ``warnings.simplefilter("once")`` and ``logging.basicConfig`` (both
process-wide) are undone after the import; its appdirs user-data folder (created at import, never
used) is put under the temp directory instead of ``~/.local/share``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import logging
import os
import re
import sys
import tempfile
import types
import warnings
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

__all__ = [
    "APPLIED_PATCHES", "BoundedModule", "BoundedTensor", "PerturbationLpNorm", "auto_LiRPA",
    "safe_bound_opts", "clamp_gradient_vanishes_at_bounds", "torchscript_compiles",
    "sparse_alpha_test_misses_empty_layers", "scripted_lirpa_functions",
]

# torch >= 2.10's FutureWarning for every torch.jit.script call (auto_LiRPA's decorators, the probe below).
_JIT_DEPRECATION = r"`torch\.jit\.script` is deprecated"

# --------------------------------------------------------------------------------------------------
# Detection functions (pure checks; arguments are injectable so tests can exercise both branches).
# --------------------------------------------------------------------------------------------------


def needs_arraysetops_shim() -> bool:
    """True when ``numpy.lib.arraysetops`` cannot be imported (numpy >= 2)."""
    if "numpy.lib.arraysetops" in sys.modules:
        return False
    try:
        return importlib.util.find_spec("numpy.lib.arraysetops") is None
    except (ImportError, ValueError):
        return True


def needs_np_bool(np_module: Any = np) -> bool:
    """True when ``np.bool`` is missing (numpy 1.24 - 1.26; numpy 2 has it again)."""
    return not hasattr(np_module, "bool")


def needs_optimize_graph(onnx_utils: Any = None) -> bool:
    """True when ``torch.onnx.utils._optimize_graph`` is missing."""
    if onnx_utils is None:
        onnx_utils = importlib.import_module("torch.onnx.utils")
    return not hasattr(onnx_utils, "_optimize_graph")


def needs_set_opset_version(symbolic_helper: Any = None) -> bool:
    """True when ``torch.onnx.symbolic_helper._set_opset_version`` is missing (torch >= 2.9)."""
    if symbolic_helper is None:
        symbolic_helper = importlib.import_module("torch.onnx.symbolic_helper")
    return not hasattr(symbolic_helper, "_set_opset_version")


def needs_node_getitem(node_cls: type = torch._C.Node) -> bool:
    """True when TorchScript graph nodes cannot be subscripted by attribute name."""
    return not hasattr(node_cls, "__getitem__")


def needs_named_members_fix(bounded_module_cls: type) -> bool:
    """True when torch passes ``remove_duplicate`` to ``_named_members`` but the override lacks it."""
    torch_params = inspect.signature(nn.Module._named_members).parameters
    own_params = inspect.signature(bounded_module_cls._named_members).parameters
    return "remove_duplicate" in torch_params and "remove_duplicate" not in own_params


def clamp_gradient_vanishes_at_bounds(clamp: Callable[..., torch.Tensor] = torch.clamp) -> bool:
    """True when ``clamp(x, min=0., max=1.)`` has zero gradient at x = 0 or x = 1 (torch 2.14).

    Called exactly as auto_LiRPA calls it (Python-float bounds): with tensor bounds torch 2.14 gives
    0.5 at the boundary instead, so the form of the call matters.
    """
    x = torch.tensor([0.0, 1.0], requires_grad=True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(clamp(x, min=0.0, max=1.0).sum(), x)
    return bool((grad == 0).any())


def torchscript_compiles(script: Callable[..., Any] | None = None) -> bool:
    """True when ``torch.jit.script`` turns a Python function into TorchScript (the default).

    False under ``PYTORCH_JIT=0``, where torch itself returns the function unchanged. A ``script``
    that raises (a torch without TorchScript) counts as compiling: auto_LiRPA's decorators would fail.
    """
    if script is None:
        script = torch.jit.script

    def probe(t: torch.Tensor) -> torch.Tensor:
        return t + 1

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
            return script(probe) is not probe
    except Exception:  # noqa: BLE001 - any failure to script means the decorators must not run it
        return True


# The test 0.3's BoundRelu uses to tell a shared alpha (spec size 1, no lookup table) from a sparse-spec
# one, and the allocation that makes a sparse-spec alpha of spec size 1 when it stores no slope.
_SHARED_ALPHA_TEST = "self.alpha[start_node.name].size(1) != 1"
_SPARSE_SPEC_ALLOC = "sparsity + 1"


def sparse_alpha_test_misses_empty_layers(relu_cls: type) -> bool:
    """True when ``relu_cls`` (BoundRelu) mistakes an empty sparse-spec alpha for a shared one (0.3).

    A source check: the bug is in the code, not in the environment. 0.3.1 dropped the size test.
    """
    try:
        relaxation = inspect.getsource(relu_cls._backward_relaxation)
        init = inspect.getsource(relu_cls.init_opt_parameters)
    except (AttributeError, OSError, TypeError):
        return False
    return _SHARED_ALPHA_TEST in relaxation and _SPARSE_SPEC_ALLOC in init


# --------------------------------------------------------------------------------------------------
# Replacements.
# --------------------------------------------------------------------------------------------------


def _node_getitem(node: torch._C.Node, name: str) -> Any:
    """``node[name]``: the attribute getter is named after the attribute's kind (``f``, ``i``, ``t``...)."""
    return getattr(node, node.kindOf(name))(name)


def _find_onnx_globals() -> Any:
    """The TorchScript ONNX exporter's GLOBALS object, wherever this torch keeps it."""
    for name in ("torch.onnx._internal.torchscript_exporter._globals", "torch.onnx._globals"):
        try:
            return importlib.import_module(name).GLOBALS
        except (ImportError, AttributeError):
            continue
    raise ImportError("cannot find the TorchScript ONNX exporter's GLOBALS in this torch; "
                      "auto_LiRPA 0.3 needs it to parse models")


def _find_optimize_graph() -> Callable[..., Any]:
    for name in ("torch.onnx._internal.torchscript_exporter.utils", "torch.onnx.utils"):
        try:
            return importlib.import_module(name)._optimize_graph
        except (ImportError, AttributeError):
            continue
    raise ImportError("cannot find _optimize_graph in this torch; auto_LiRPA 0.3 needs it to parse models")


def _set_opset_version(opset_version: int) -> None:
    """What torch <= 2.8's ``symbolic_helper._set_opset_version`` did (the exporter's global opset)."""
    _find_onnx_globals().export_onnx_opset_version = opset_version


def _clamp01_pass_boundary(x: torch.Tensor) -> torch.Tensor:
    """``clamp(x, 0, 1)`` with gradient 1 on the closed interval [0, 1] and 0 outside (old torch)."""
    inside = (x >= 0.0) & (x <= 1.0)
    # Where x is inside, clamp(x) == x, so the value is unchanged; only the gradient differs.
    return torch.where(inside, x, torch.clamp(x, min=0.0, max=1.0).detach())


def _relu_mask_alpha(lower: torch.Tensor, upper: torch.Tensor, lb_lower_d: torch.Tensor | None,
                     ub_lower_d: torch.Tensor | None):
    """``BoundRelu._relu_mask_alpha`` of 0.3 with the boundary-passing clamp (logic unchanged).

    Stable-active units get slope 1, stable-inactive 0, unstable ones the clamped alpha.
    """
    lower_mask = (lower >= 0).requires_grad_(False).to(lower.dtype)
    upper_mask = (upper <= 0).requires_grad_(False)
    zero_coeffs = upper_mask.all()
    no_mask = (1. - lower_mask) * (1. - upper_mask.to(upper.dtype))
    if lb_lower_d is not None:
        lb_lower_d = _clamp01_pass_boundary(lb_lower_d) * no_mask + lower_mask
    if ub_lower_d is not None:
        ub_lower_d = _clamp01_pass_boundary(ub_lower_d) * no_mask + lower_mask
    return lb_lower_d, ub_lower_d, zero_coeffs


# The exact lines of 0.3 that _relu_mask_alpha above reproduces; if the installed auto_LiRPA differs
# the replacement would silently change its behaviour, so it is then not applied.
_RELU_MASK_ALPHA_EXPECTED = (
    "lower_mask = (lower >= 0).requires_grad_(False).to(lower.dtype)",
    "upper_mask = (upper <= 0).requires_grad_(False)",
    "no_mask = (1. - lower_mask) * (1. - upper_mask.to(upper.dtype))",
    "lb_lower_d = torch.clamp(lb_lower_d, min=0., max=1.) * no_mask + lower_mask",
    "ub_lower_d = torch.clamp(ub_lower_d, min=0., max=1.) * no_mask + lower_mask",
)


def _pad_empty_sparse_spec_alpha(relu: nn.Module) -> None:
    """Give each sparse-spec alpha of ``relu`` (a BoundRelu) at least two slots along the spec dimension.

    0.3 stores a sparse-spec alpha as (2, k + 1, batch, ...): slot 0 is reserved for neurons missing
    from the lookup table, slots 1..k hold the k start-node neurons CROWN found unstable. With k = 0
    the spec size is 1, which ``_backward_relaxation`` reads as a shared alpha: it skips the lookup
    table and then asserts there is none. One extra slot, a copy of slot 0 that no lookup entry
    points to (so it gets no gradient), makes the size test true again; the lookup then sends every
    neuron to slot 0, as 0.3.1 does after removing the size test. Any slope in [0, 1] gives a sound
    ReLU relaxation (``_relu_mask_alpha`` clamps it), so which slot a neuron reads changes only
    tightness, never soundness.
    """
    for name, lookup in relu.alpha_lookup_idx.items():
        alpha = relu.alpha[name]
        if lookup is not None and alpha.size(1) == 1:
            padded = torch.cat([alpha.detach(), alpha.detach()], dim=1)
            relu.alpha[name] = padded.requires_grad_(alpha.requires_grad)


def _with_padded_sparse_alpha(init_opt_parameters: Callable[..., None]) -> Callable[..., None]:
    """``BoundRelu.init_opt_parameters`` followed by :func:`_pad_empty_sparse_spec_alpha`."""

    @functools.wraps(init_opt_parameters)
    def init_opt_parameters_padded(self, start_nodes):
        init_opt_parameters(self, start_nodes)
        _pad_empty_sparse_spec_alpha(self)

    init_opt_parameters_padded._harness_patch = "relu-empty-sparse-alpha"
    return init_opt_parameters_padded


def _is_lirpa_function(obj: Any) -> bool:
    """A plain Python function defined in one of auto_LiRPA's modules."""
    module = getattr(obj, "__module__", None) or ""
    return inspect.isfunction(obj) and (module == "auto_LiRPA" or module.startswith("auto_LiRPA."))


def scripted_lirpa_functions() -> list[str]:
    """Qualified names of the TorchScript functions reachable in the imported auto_LiRPA modules.

    Looks at module attributes and at class attributes (0.3 scripts static methods). Empty after an
    import with ``no-torchscript`` applied.
    """
    found = []
    for mod_name, module in list(sys.modules.items()):
        if module is None or not (mod_name == "auto_LiRPA" or mod_name.startswith("auto_LiRPA.")):
            continue
        for attr, value in vars(module).items():
            if isinstance(value, torch.jit.ScriptFunction):
                found.append(f"{mod_name}.{attr}")
            elif isinstance(value, type) and value.__module__ == mod_name:
                for key, member in vars(value).items():
                    if isinstance(member, (staticmethod, classmethod)):
                        member = member.__func__
                    if isinstance(member, torch.jit.ScriptFunction):
                        found.append(f"{mod_name}.{value.__qualname__}.{key}")
    return sorted(found)


def _named_members(self: nn.Module, get_members_fn: Callable, prefix: str = "", recurse: bool = True,
                   remove_duplicate: bool = True) -> Iterator[tuple[str, Any]]:
    """``BoundedModule._named_members`` with torch >= 2.0's ``remove_duplicate`` keyword honoured.

    As in 0.3, names are translated back to the original model's names through ``node_name_map``.
    """
    seen: set = set()
    modules = (self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse
               else [(prefix, self)])
    for module_prefix, module in modules:
        for key, value in get_members_fn(module):
            if value is None:
                continue
            if remove_duplicate:
                if value in seen:
                    continue
                seen.add(value)
            name = module_prefix + ("." if module_prefix else "") + key
            name = self.node_name_map.get(name, name)
            yield name, value


# --------------------------------------------------------------------------------------------------
# Application.
# --------------------------------------------------------------------------------------------------

# What the runtime patches replaced, by patch name.
_ORIGINALS: dict[str, Any] = {}


def _lirpa_data_dir() -> str:
    """Where auto_LiRPA's (unused) appdirs user-data folder goes: under the temp dir, per user."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return os.path.join(tempfile.gettempdir(), f"auto_LiRPA-{uid}")


@contextlib.contextmanager
def _import_time_fixes(applied: list[str]) -> Iterator[None]:
    """Everything needed only while auto_LiRPA's modules execute; undone afterwards."""
    undo: list[Callable[[], None]] = []
    root = logging.getLogger()
    root_handlers = list(root.handlers)
    try:
        if needs_arraysetops_shim():
            shim = types.ModuleType("numpy.lib.arraysetops")
            shim.isin = np.isin  # the only name auto_LiRPA takes from it
            sys.modules["numpy.lib.arraysetops"] = shim
            undo.append(lambda: sys.modules.pop("numpy.lib.arraysetops", None))
            applied.append("np-arraysetops")

        onnx_utils = importlib.import_module("torch.onnx.utils")
        if needs_optimize_graph(onnx_utils):
            onnx_utils._optimize_graph = _find_optimize_graph()
            undo.append(lambda: delattr(onnx_utils, "_optimize_graph"))
            applied.append("onnx-optimize-graph")
        helper = importlib.import_module("torch.onnx.symbolic_helper")
        if needs_set_opset_version(helper):
            _find_onnx_globals()  # fail here, with a clear message, rather than at the first parse
            helper._set_opset_version = _set_opset_version
            undo.append(lambda: delattr(helper, "_set_opset_version"))
            applied.append("onnx-set-opset")

        if torchscript_compiles():
            # What PYTORCH_JIT=0 does, for auto_LiRPA's functions only: its @torch.jit.script
            # decorators (evaluated while its modules execute, i.e. now) return the Python function.
            # Everything else, including torch modules first imported meanwhile, is still compiled.
            original_script = torch.jit.script
            kept: dict[str, Callable[..., Any]] = {}

            def script(obj, *args, **kwargs):
                if _is_lirpa_function(obj) and not args and not kwargs:
                    kept[f"{obj.__module__}.{obj.__qualname__}"] = obj
                    return obj
                return original_script(obj, *args, **kwargs)

            torch.jit.script = script
            undo.append(lambda: setattr(torch.jit, "script", original_script))
            _ORIGINALS["no-torchscript"] = kept  # what 0.3 would have compiled (tests rebuild it)
            applied.append("no-torchscript")

        # auto_LiRPA.utils creates appdirs.user_data_dir('auto_LiRPA') at import and never uses it.
        try:
            import appdirs
        except ImportError:  # auto_LiRPA's own import will report it
            appdirs = None
        if appdirs is not None:
            original_udd = appdirs.user_data_dir

            def user_data_dir(appname=None, *args, **kwargs):
                if appname == "auto_LiRPA":
                    return _lirpa_data_dir()
                return original_udd(appname, *args, **kwargs)

            appdirs.user_data_dir = user_data_dir
            undo.append(lambda: setattr(appdirs, "user_data_dir", original_udd))

        # Record rather than filter: auto_LiRPA.utils runs warnings.simplefilter("once"), which would
        # sit in front of any "ignore" filter set here. catch_warnings also restores the filter list
        # afterwards, so that process-wide change does not outlive the import.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            if not (issubclass(w.category, FutureWarning) and re.match(_JIT_DEPRECATION, str(w.message))):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    finally:
        for fn in reversed(undo):
            fn()
        # auto_LiRPA.utils calls logging.basicConfig(stream=sys.stdout), which would turn the
        # application's own later basicConfig into a no-op. Its logger still works: messages of
        # level WARNING and above reach Python's last-resort handler if nothing else is configured.
        for handler in list(root.handlers):
            if handler not in root_handlers:
                root.removeHandler(handler)


def _runtime_fixes(lirpa: types.ModuleType) -> list[str]:
    """Patches needed whenever auto_LiRPA runs; each checked first, so a second call applies none."""
    applied: list[str] = []
    if needs_np_bool():
        # numpy < 1.24 defined np.bool as the builtin bool (deprecated alias); only a dtype argument
        # uses it in auto_LiRPA, where bool and np.bool_ mean the same.
        np.bool = bool
        applied.append("np-bool")

    if needs_node_getitem():
        torch._C.Node.__getitem__ = _node_getitem  # exactly what torch <= 1.12 installed
        applied.append("node-getitem")

    bounded_module = lirpa.BoundedModule
    if needs_named_members_fix(bounded_module):
        _ORIGINALS["named-members"] = inspect.getattr_static(bounded_module, "_named_members")
        bounded_module._named_members = _named_members
        applied.append("named-members")

    from auto_LiRPA.operators import BoundRelu

    init = inspect.getattr_static(BoundRelu, "init_opt_parameters")
    if getattr(init, "_harness_patch", None) is None and sparse_alpha_test_misses_empty_layers(BoundRelu):
        _ORIGINALS["relu-empty-sparse-alpha"] = init
        BoundRelu.init_opt_parameters = _with_padded_sparse_alpha(init)
        applied.append("relu-empty-sparse-alpha")

    current = inspect.getattr_static(BoundRelu, "_relu_mask_alpha")
    already = isinstance(current, staticmethod) and current.__func__ is _relu_mask_alpha
    if not already and clamp_gradient_vanishes_at_bounds():
        source = inspect.getsource(BoundRelu._relu_mask_alpha)
        if all(line in source for line in _RELU_MASK_ALPHA_EXPECTED):
            _ORIGINALS["relu-alpha-clamp"] = current  # kept so tests can show what the patch fixes
            BoundRelu._relu_mask_alpha = staticmethod(_relu_mask_alpha)
            applied.append("relu-alpha-clamp")
        else:
            warnings.warn("torch.clamp has zero gradient at its bounds on this torch, but "
                          "BoundRelu._relu_mask_alpha is not the 0.3 version this module knows how to "
                          "fix: alpha-CROWN may silently return the CROWN bounds", RuntimeWarning,
                          stacklevel=2)
    return applied


def _import_auto_lirpa() -> tuple[types.ModuleType, tuple[str, ...]]:
    applied: list[str] = []
    with _import_time_fixes(applied):
        import auto_LiRPA as lirpa
    if "no-torchscript" in applied:
        # Only decorators that ran during this import were bypassed; modules imported earlier (or a
        # future release scripting at call time) would keep TorchScript: say so rather than trust it.
        left = scripted_lirpa_functions()
        if left:
            warnings.warn(f"auto_LiRPA functions still run as TorchScript (imported before "
                          f"harness.bounds.lirpa_compat?): {', '.join(left)}; they may fail on CUDA "
                          f"(set PYTORCH_JIT=0 to avoid that)", RuntimeWarning, stacklevel=2)
    applied += _runtime_fixes(lirpa)
    return lirpa, tuple(applied)


auto_LiRPA, APPLIED_PATCHES = _import_auto_lirpa()
"""``APPLIED_PATCHES``: short names of the fixes this interpreter needed (see the module docstring)."""

from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm  # noqa: E402

# The option exists in 0.3's BoundedModule defaults (True there); fail loudly if a different
# auto_LiRPA no longer knows it, since silently passing an unknown option would do nothing.
_SPARSE_FEATURES_ALPHA = "sparse_features_alpha"
if _SPARSE_FEATURES_ALPHA not in inspect.getsource(BoundedModule.__init__):
    raise ImportError(f"this auto_LiRPA ({getattr(auto_LiRPA, '__version__', '?')}) has no "
                      f"{_SPARSE_FEATURES_ALPHA!r} option; harness.bounds.lirpa_compat targets 0.3")


def safe_bound_opts() -> dict[str, Any]:
    """``bound_opts`` every BoundedModule of the project must be built with (a fresh dict).

    ``sparse_features_alpha=False`` works around 0.3's shape mismatch in ``reconstruct_full_alpha``
    when more than ~90% of a conv layer's ReLUs are unstable (it only costs memory for alpha).
    """
    return {_SPARSE_FEATURES_ALPHA: False}
