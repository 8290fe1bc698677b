"""harness.bounds.lirpa_compat: auto_LiRPA 0.3 imports and runs on this torch / numpy, each fix only when needed."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import tempfile
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from harness.bounds import lirpa_compat as compat

REPO = Path(__file__).resolve().parents[2]


def _version(v: str) -> tuple[int, int]:
    major, minor = v.split("+")[0].split(".")[:2]
    return int(major), int(minor)


TORCH = _version(torch.__version__)
NUMPY = _version(np.__version__)


def test_reexports_come_from_auto_lirpa():
    assert compat.auto_LiRPA.__name__ == "auto_LiRPA"
    assert compat.BoundedModule is compat.auto_LiRPA.BoundedModule
    assert compat.BoundedTensor is compat.auto_LiRPA.BoundedTensor
    assert compat.PerturbationLpNorm is compat.auto_LiRPA.PerturbationLpNorm


def test_applied_patches_match_what_this_environment_needs():
    applied = set(compat.APPLIED_PATCHES)
    assert len(applied) == len(compat.APPLIED_PATCHES)  # no duplicates
    # Import-time shims are removed after the import, so their detectors still see the need.
    assert ("np-arraysetops" in applied) == compat.needs_arraysetops_shim()
    assert ("onnx-optimize-graph" in applied) == compat.needs_optimize_graph()
    assert ("onnx-set-opset" in applied) == compat.needs_set_opset_version()
    assert ("named-members" in applied) == (
        "remove_duplicate" in inspect.signature(nn.Module._named_members).parameters)
    assert ("relu-alpha-clamp" in applied) == compat.clamp_gradient_vanishes_at_bounds()
    # numpy 2 has np.bool again (as np.bool_): then it must not have been touched.
    if NUMPY >= (2, 0):
        assert "np-bool" not in applied and np.bool is np.bool_
    assert ("no-torchscript" in applied) == compat.torchscript_compiles()
    from auto_LiRPA.operators import BoundRelu
    assert ("relu-empty-sparse-alpha" in applied) == compat.sparse_alpha_test_misses_empty_layers(BoundRelu)
    if TORCH >= (2, 14) and NUMPY >= (2, 0):
        expected = {"np-arraysetops", "onnx-set-opset", "node-getitem", "named-members",
                    "relu-empty-sparse-alpha", "relu-alpha-clamp"}
        if os.environ.get("PYTORCH_JIT", "1") != "0":
            expected.add("no-torchscript")
        assert applied == expected


def test_runtime_fixes_are_idempotent():
    # Everything needed is in place now, so a second pass must find nothing to do.
    assert compat._runtime_fixes(compat.auto_LiRPA) == []
    assert not compat.needs_node_getitem()
    assert not compat.needs_named_members_fix(compat.BoundedModule)


def test_import_time_shims_do_not_outlive_the_import():
    if "np-arraysetops" in compat.APPLIED_PATCHES:
        assert "numpy.lib.arraysetops" not in sys.modules
    if "onnx-set-opset" in compat.APPLIED_PATCHES:
        import torch.onnx.symbolic_helper as helper
        assert not hasattr(helper, "_set_opset_version")


# ---- detectors, both branches, with stand-ins -------------------------------------------------------


def test_np_bool_detector():
    assert compat.needs_np_bool(types.SimpleNamespace())
    assert not compat.needs_np_bool(types.SimpleNamespace(bool=bool))


def test_onnx_detectors():
    assert compat.needs_optimize_graph(types.SimpleNamespace())
    assert not compat.needs_optimize_graph(types.SimpleNamespace(_optimize_graph=lambda *a: None))
    assert compat.needs_set_opset_version(types.SimpleNamespace())
    assert not compat.needs_set_opset_version(types.SimpleNamespace(_set_opset_version=lambda v: None))


def test_node_getitem_detector():
    class Plain:
        pass

    class Subscriptable:
        def __getitem__(self, k):
            return k

    assert compat.needs_node_getitem(Plain)
    assert not compat.needs_node_getitem(Subscriptable)


def test_named_members_detector():
    class Old(nn.Module):
        def _named_members(self, get_members_fn, prefix="", recurse=True):
            yield from ()

    class New(nn.Module):
        def _named_members(self, get_members_fn, prefix="", recurse=True, remove_duplicate=True):
            yield from ()

    expected_old = "remove_duplicate" in inspect.signature(nn.Module._named_members).parameters
    assert compat.needs_named_members_fix(Old) == expected_old
    assert not compat.needs_named_members_fix(New)


def test_clamp_gradient_detector():
    if TORCH >= (2, 14):
        assert compat.clamp_gradient_vanishes_at_bounds()  # the torch 2.14 regression, seen here

    def old_clamp(x, min, max):  # torch <= 2.13: gradient 1 on the closed interval
        return compat._clamp01_pass_boundary(x)

    assert not compat.clamp_gradient_vanishes_at_bounds(old_clamp)


def test_arraysetops_detector():
    # On numpy >= 2 the module is gone; on numpy 1.x it exists and no shim is needed.
    assert compat.needs_arraysetops_shim() == (NUMPY >= (2, 0))


# ---- replacements --------------------------------------------------------------------------------


def test_boundary_passing_clamp_values_and_gradient():
    x = torch.tensor([-1.0, -1e-7, 0.0, 0.3, 1.0, 1.0 + 1e-6, 2.0], dtype=torch.float64, requires_grad=True)
    out = compat._clamp01_pass_boundary(x)
    assert torch.equal(out, torch.clamp(x, 0.0, 1.0))
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_relu_mask_alpha_replacement_matches_original_values():
    torch.manual_seed(0)
    lower = torch.randn(2, 3, 5)
    upper = lower + torch.rand(2, 3, 5) * 2
    alpha = torch.rand(4, 2, 3, 5) * 1.6 - 0.3  # also outside [0, 1]
    alpha[0, 0, 0] = 0.0
    alpha[1, 0, 0] = 1.0
    ours = compat._relu_mask_alpha(lower, upper, alpha, alpha.clone())
    original = compat._ORIGINALS.get("relu-alpha-clamp")
    if original is None:
        pytest.skip("relu-alpha-clamp was not needed on this torch")
    theirs = original.__func__(lower, upper, alpha, alpha.clone())
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:FutureWarning")
def test_node_getitem_reads_graph_attributes():
    graph = torch.jit.trace(lambda t: torch.nn.functional.leaky_relu(t * 2.0, 0.1), torch.ones(3)).graph
    seen = 0
    for node in graph.nodes():
        for k in node.attributeNames():
            assert repr(node[k]) == repr(getattr(node, node.kindOf(k))(k))
            seen += 1
    assert seen > 0


def test_parameters_work_and_keep_original_names():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    bounded = compat.BoundedModule(net, torch.zeros(2, 4), bound_opts=compat.safe_bound_opts())
    names = [n for n, _ in bounded.named_parameters()]
    assert sorted(names) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert len(list(bounded.parameters())) == 4
    assert len(list(bounded.named_parameters(remove_duplicate=False))) >= 4


def test_safe_bound_opts_names_an_option_auto_lirpa_reads():
    opts = compat.safe_bound_opts()
    assert opts == {"sparse_features_alpha": False}
    from auto_LiRPA.operators import activation
    assert "options.get('sparse_features_alpha'" in inspect.getsource(activation)
    opts["x"] = 1
    assert compat.safe_bound_opts() == {"sparse_features_alpha": False}  # a fresh dict each time


def test_appdirs_folder_under_tempdir_and_appdirs_restored():
    import appdirs
    from auto_LiRPA import utils

    assert utils.user_data_dir.startswith(tempfile.gettempdir())
    assert not appdirs.user_data_dir("auto_LiRPA").startswith(tempfile.gettempdir())


def test_clean_import_in_fresh_interpreter():
    """No jit-deprecation warning, no leftover warning filters or root-logger handlers."""
    code = (
        "import warnings, logging, torch, numpy\n"
        "import torch.onnx.utils, torch.onnx.symbolic_helper, torch.utils.cpp_extension\n"
        "before = list(warnings.filters); handlers = list(logging.getLogger().handlers)\n"
        "import harness.bounds.lirpa_compat as c\n"
        "assert warnings.filters == before, 'warning filters changed'\n"
        "assert logging.getLogger().handlers == handlers, 'root logger changed'\n"
        "print('PATCHES', ','.join(c.APPLIED_PATCHES))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "torch.jit.script" not in proc.stderr
    assert f"PATCHES {','.join(compat.APPLIED_PATCHES)}" in proc.stdout


# ---- no-torchscript ------------------------------------------------------------------------------

# Every function auto_LiRPA 0.3 decorates with @torch.jit.script (grep of its sources).
SCRIPTED_IN_0_3 = {
    "auto_LiRPA.operators.activation.BoundActivation.bound_forward_b",
    "auto_LiRPA.operators.activation.BoundActivation.bound_forward_w",
    "auto_LiRPA.operators.activation.BoundRelu._relu_upper_bound",
    "auto_LiRPA.operators.clampmult.ClampedMultiplication.clamp_mutiply_backward",
    "auto_LiRPA.operators.clampmult.ClampedMultiplication.clamp_mutiply_forward",
    "auto_LiRPA.operators.cut_ops.CutModule.jit_arelu_lA",
    "auto_LiRPA.operators.cut_ops.CutModule.jit_arelu_lbias",
    "auto_LiRPA.operators.cut_ops.CutModule.jit_arelu_uA",
    "auto_LiRPA.operators.cut_ops.CutModule.jit_arelu_ubias",
    "auto_LiRPA.operators.linear.BoundLinear.bound_forward_mul",
    "auto_LiRPA.operators.pooling.BoundMaxPool.jit_mutiply",
}
RELU_UPPER_BOUND = "auto_LiRPA.operators.activation.BoundRelu._relu_upper_bound"


def test_torchscript_detector():
    assert compat.torchscript_compiles() == (os.environ.get("PYTORCH_JIT", "1") != "0")
    assert not compat.torchscript_compiles(lambda fn: fn)  # what torch.jit.script does under PYTORCH_JIT=0

    def removed(fn):
        raise RuntimeError("TorchScript is not supported")

    assert compat.torchscript_compiles(removed)


def _script_quietly(fn):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=compat._JIT_DEPRECATION, category=FutureWarning)
        return torch.jit.script(fn)


def test_no_torchscript_leaves_every_0_3_helper_in_python():
    if "no-torchscript" not in compat.APPLIED_PATCHES:
        pytest.skip("TorchScript is off in this interpreter (PYTORCH_JIT=0)")
    assert set(compat._ORIGINALS["no-torchscript"]) == SCRIPTED_IN_0_3
    assert compat.scripted_lirpa_functions() == []
    for name, fn in compat._ORIGINALS["no-torchscript"].items():
        mod_name, cls_name, attr = name.rsplit(".", 2)
        assert inspect.getattr_static(getattr(sys.modules[mod_name], cls_name), attr).__func__ is fn, name


def test_torchscript_bypass_does_not_outlive_the_import():
    def twice(t: torch.Tensor) -> torch.Tensor:
        return t * 2

    twice.__module__ = "auto_LiRPA.operators.later"  # would be bypassed during the import
    assert isinstance(_script_quietly(twice), torch.jit.ScriptFunction) == compat.torchscript_compiles()


def test_scripted_lirpa_functions_finds_a_scripted_static_method(monkeypatch):
    """The emptiness check above can fail: a ScriptFunction put back is reported."""
    from auto_LiRPA.operators.activation import BoundRelu

    fn = compat._ORIGINALS.get("no-torchscript", {}).get(RELU_UPPER_BOUND)
    if fn is None:
        pytest.skip("no-torchscript not applied")
    monkeypatch.setattr(BoundRelu, "_relu_upper_bound", staticmethod(_script_quietly(fn)))
    assert compat.scripted_lirpa_functions() == [RELU_UPPER_BOUND]


def _torchscript_restored(monkeypatch) -> None:
    """Put back what 0.3's decorators make: each kept function compiled by torch.jit.script."""
    for name, fn in compat._ORIGINALS["no-torchscript"].items():
        mod_name, cls_name, attr = name.rsplit(".", 2)
        monkeypatch.setattr(getattr(sys.modules[mod_name], cls_name), attr, staticmethod(_script_quietly(fn)))


def _bounds_by_method(net: nn.Module, x: torch.Tensor, eps: float) -> dict[str, torch.Tensor]:
    bounded = compat.BoundedModule(net, torch.zeros_like(x), bound_opts=compat.safe_bound_opts())
    C = torch.eye(net(x).shape[1]).expand(x.shape[0], -1, -1)
    ptb = compat.PerturbationLpNorm(eps=eps, x_L=x - eps, x_U=x + eps)
    bx = compat.BoundedTensor(x, ptb)
    out = {}
    with torch.no_grad():
        out["CROWN lower"], out["CROWN upper"] = bounded.compute_bounds(x=(bx,), C=C, method="CROWN")
    # 1 iteration: the slopes at their CROWN start, evaluated under autograd (no update is made).
    for iterations in (1, 4):
        bounded.set_bound_opts({"optimize_bound_args": {"iteration": iterations, "lr_alpha": 0.1}})
        with torch.enable_grad():
            lower, _ = bounded.compute_bounds(x=(bx,), C=C, method="alpha-CROWN", bound_upper=False)
        out[f"alpha-CROWN {iterations} lower"] = lower.detach()
    return out


def _tiny_net(arch: str, gen: torch.Generator) -> tuple[nn.Module, torch.Tensor]:
    if arch == "conv":  # conv layers: auto_LiRPA's default "patches" mode
        net = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(),
                            nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                            nn.Linear(4 * 4, 5))
        x = torch.rand(2, 1, 8, 8, generator=gen)
    else:
        net = nn.Sequential(nn.Flatten(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                            nn.Linear(16, 5))
        x = torch.rand(2, 20, generator=gen)
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-0.5, 0.5, generator=gen)
    return net.eval(), x


@pytest.mark.parametrize("arch", ["conv", "mlp"])
def test_no_torchscript_bounds_identical_to_torchscript(arch, monkeypatch):
    """Bit for bit wherever no gradient flows; alpha-CROWN's optimised slopes may differ in the last bits.

    TorchScript differentiates its functions with its own derivative formulas (e.g. of the division
    in ``_relu_upper_bound``), which round differently from eager autograd (see the next test), so
    the Adam steps of alpha-CROWN can land an ulp apart (seen: MLP 6e-8; conv none).
    """
    if "no-torchscript" not in compat.APPLIED_PATCHES:
        pytest.skip("TorchScript is off in this interpreter (PYTORCH_JIT=0)")
    net, x = _tiny_net(arch, torch.Generator().manual_seed(11))
    python = _bounds_by_method(net, x, 0.1)
    _torchscript_restored(monkeypatch)
    assert compat.scripted_lirpa_functions()  # the other run really used TorchScript
    scripted = _bounds_by_method(net, x, 0.1)
    for key in ("CROWN lower", "CROWN upper", "alpha-CROWN 1 lower"):
        assert torch.equal(python[key], scripted[key]), key
    key = "alpha-CROWN 4 lower"
    torch.testing.assert_close(python[key], scripted[key], rtol=1e-6, atol=1e-6)
    assert (python[key] > python["CROWN lower"] + 1e-4).any()  # the slopes did move


def test_relu_upper_bound_values_identical_gradients_rounded_differently():
    """The one scripted helper alpha-CROWN differentiates through its inputs: same values, same
    gradients up to rounding (TorchScript's symbolic derivative vs eager autograd)."""
    fn = compat._ORIGINALS.get("no-torchscript", {}).get(RELU_UPPER_BOUND)
    if fn is None:
        pytest.skip("no-torchscript not applied")
    scripted = _script_quietly(fn)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):  # TorchScript's profiling executor switches to its optimised graph after 2 runs
        lower = torch.randn(1000, generator=gen)
        upper = lower + 2 * torch.rand(1000, generator=gen)
        w = torch.randn(2, 1000, generator=gen)
        results = []
        for f in (fn, scripted):
            lo, up = lower.clone().requires_grad_(), upper.clone().requires_grad_()
            slope, intercept = f(lo, up)
            (slope * w[0] + intercept * w[1]).sum().backward()
            results.append((slope.detach(), intercept.detach(), lo.grad, up.grad))
        (s0, b0, gl0, gu0), (s1, b1, gl1, gu1) = results
        assert torch.equal(s0, s1) and torch.equal(b0, b1)
        torch.testing.assert_close(gl0, gl1, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gu0, gu1, rtol=1e-5, atol=1e-5)
