"""The certifier interface (harness/bounds/__init__.py): validation, the floating-point rule, every method's verdicts."""

from __future__ import annotations

import copy
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.bounds import FP32_ABS_TOL, METHODS, Verdicts, certify, fp_tolerance, margin_lower_bounds
from harness.bounds.spec import spec_matrix
from harness.models import Normalize, build_model
from harness.threat_model import input_box

REPO = Path(__file__).resolve().parents[2]
MNIST = ((0.1307,), (0.3081,))
K = 10


def small_model(arch: str = "cnn_small", seed: int = 0, dtype=torch.float32, width=None) -> nn.Sequential:
    torch.manual_seed(seed)
    model = build_model(arch, (1, 28, 28), K, *MNIST, width=width)
    with torch.no_grad():  # BN with non-default statistics, so eval mode is not the identity
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval().to(dtype)


def batch(model: nn.Module, n: int, seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=gen).to(dtype)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = torch.where(torch.arange(n) % 3 == 2, (pred + 1) % K, pred)  # every third sample misclassified
    return x, y


def exact_margins(model, x, y):
    with torch.no_grad():
        z = model(x)
    return torch.bmm(spec_matrix(y, z.shape[1], z.dtype), z.unsqueeze(-1)).squeeze(-1)


# --------------------------------------------------------------------------------- validation
def test_methods_constant_matches_the_adapter():
    lirpa = pytest.importorskip("harness.bounds.lirpa")
    assert METHODS == ("ibp",) + tuple(lirpa.LIRPA_METHODS)


@pytest.mark.parametrize("fn", [certify, margin_lower_bounds], ids=["certify", "margin_lower_bounds"])
def test_invalid_inputs_raise_clear_errors(fn):
    model = small_model("mlp", width=16)
    x, y = batch(model, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn(model, x + 1.5, y, 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn(model, x - 1.5, y, 0.1)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        fn(model, x, y, -0.01)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        fn(model, x, y, float("nan"))
    with pytest.raises(ValueError, match="batch size mismatch"):
        fn(model, x, y[:3], 0.1)
    with pytest.raises(ValueError, match="alpha-crown") as info:
        fn(model, x, y, 0.1, "crown-optimized")
    assert all(m in str(info.value) for m in METHODS)
    with pytest.raises(ValueError, match="batch_size"):
        fn(model, x, y, 0.1, batch_size=-2)
    with pytest.raises(ValueError, match="eval"):
        fn(model.train(), x, y, 0.1)
    with pytest.raises(ValueError, match="float32 and float64"):
        fn(small_model("mlp", width=16, dtype=torch.float16), x, y, 0.1)


def test_importing_bounds_does_not_import_auto_lirpa():
    code = "import sys, harness.bounds; assert 'auto_LiRPA' not in sys.modules, 'auto_LiRPA imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_empty_batch_and_batch_size_split():
    model = small_model()
    x, y = batch(model, 7)
    v = certify(model, x[:0], y[:0], 0.01)
    assert v.certified.shape == v.min_margin.shape == v.recomputed.shape == (0,)
    whole, split = certify(model, x, y, 0.002), certify(model, x, y, 0.002, batch_size=3)
    assert torch.equal(whole.certified, split.certified)
    assert torch.allclose(whole.min_margin, split.min_margin, rtol=1e-5, atol=1e-6)
    assert whole.min_margin.dtype == torch.float64 and whole.certified.dtype == torch.bool


# -------------------------------------------------------------------------- floating-point rule
def cancellation_model() -> nn.Sequential:
    """float32 rounds 1e4 + x up by one ulp (~9.8e-4), then cancels the 1e4: margin 9.8e-4 - d instead of x - d.

    With x = 5e-4 and d = 7e-4 the true margin is -2e-4 but float32 computes +2.8e-4, and the logits and
    margin bounds are all ~1e-3: only the intermediate magnitude (1e4) reveals the rounding risk.
    """
    net = nn.Sequential(Normalize((0.0,), (1.0,)), nn.Flatten(),
                        nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 2))
    with torch.no_grad():
        net[2].weight.fill_(1.0)
        net[2].bias.fill_(1e4)
        net[4].weight.fill_(1.0)
        net[4].bias.fill_(-1e4)
        net[6].weight.copy_(torch.tensor([[1.0], [0.0]]))
        net[6].bias.copy_(torch.tensor([0.0, 7e-4]))
    return net.eval()


def test_fp_rule_recomputes_hand_built_rounding_trap():
    model = cancellation_model()
    x, y = torch.full((1, 1, 1, 1), 5e-4), torch.tensor([0])
    m32 = margin_lower_bounds(model, x, y, 0.0).detach()
    assert float(m32) > 2e-4, "float32 alone would certify this sample"
    assert float(exact_margins(model, x, y).abs().max()) < 1e-3  # tiny logits: an output-based scale misses it
    v = certify(model, x, y, 0.0)
    assert bool(v.recomputed[0]) and not bool(v.certified[0])
    true = float(x.double()) - float(torch.tensor(7e-4))
    assert abs(float(v.min_margin[0]) - true) < 1e-12


def test_fp_rule_recomputes_margin_near_zero_found_by_bisection():
    model = small_model(seed=1)
    x, y = batch(model, 6, seed=1)
    first = x[:1], y[:1]
    assert float(exact_margins(model, *first).min()) > 0
    lo_eps, hi_eps = 0.0, 0.05
    for _ in range(40):  # the eps at which sample 0's float32 IBP margin crosses zero
        mid = (lo_eps + hi_eps) / 2
        with torch.no_grad():
            crossing = float(margin_lower_bounds(model, *first, mid).min()) <= 0
        if not crossing:
            lo_eps = mid
        else:
            hi_eps = mid
    eps = lo_eps
    m32 = float(margin_lower_bounds(model, *first, eps).detach().min())
    assert abs(m32) < FP32_ABS_TOL
    v = certify(model, x, y, eps)
    assert bool(v.recomputed[0])
    assert not bool(v.recomputed.all()), "samples far from 0 must keep their float32 verdict"
    model64 = copy.deepcopy(model).double()
    m64 = float(margin_lower_bounds(model64, first[0].double(), first[1], eps).detach().min())
    assert float(v.min_margin[0]) == pytest.approx(m64, abs=1e-12)  # the verdict used the float64 bound
    assert not bool(v.certified[0]) or m64 > 0
    # Away from zero the float32 verdict stands and agrees with float64.
    v64 = certify(model64, x.double(), y, eps)
    assert torch.equal(v.certified[1:], v64.certified[1:]) and not bool(v64.recomputed.any())


def test_float32_input_box_contains_the_exact_box():
    from harness.threat_model import outward_box as _outward_box

    x = torch.rand(64, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0] = torch.tensor([0.0, 1.0, 0.1, 1e-8, 1 - 1e-7])  # the clamps, and values near them
    for eps, xin in itertools.product((0.1, 1 / 255, 0.3, 1e-7, 1e-8), (x, x.double())):
        lo, hi = _outward_box(xin, eps, torch.float32)
        assert lo.dtype == hi.dtype == torch.float32
        exact_lo, exact_hi = (xin.double() - eps).clamp(min=0), (xin.double() + eps).clamp(max=1)
        assert (lo.double() <= exact_lo).all() and (hi.double() >= exact_hi).all()
        # ... and only just: at most 2 float32 ulps (~1.2e-7 at 1) wider.
        assert (exact_lo - lo.double()).max() < 2.5e-7 and (hi.double() - exact_hi).max() < 2.5e-7
    assert torch.equal(_outward_box(x, 0.0, torch.float32)[0], x)


def test_float_rule_tolerance_grows_with_scale():
    scale = torch.tensor([0.0, 1.0, 1e3], dtype=torch.float64)
    t32, t64 = fp_tolerance(scale, torch.float32), fp_tolerance(scale, torch.float64)
    assert (t32[1:] > t32[:-1]).all() and (t64 < t32 * 1e-5).all() and float(t32[0]) == FP32_ABS_TOL


# ------------------------------------------------------------------------------- every method
@pytest.fixture(scope="module")
def method_results():
    pytest.importorskip("harness.bounds.lirpa")
    out = {}
    for arch, width, eps in (("mlp", 32, 0.004), ("cnn_small", None, 0.002)):
        model = small_model(arch, seed=2, width=width)
        x, y = batch(model, 5, seed=2)
        # alpha-CROWN (the slowest by far) on the MLP only, to keep the suite fast.
        methods = METHODS if arch == "mlp" else tuple(m for m in METHODS if m != "alpha-crown")
        res = {m: (margin_lower_bounds(model, x, y, eps, m, alpha_iterations=3).detach(),
                   certify(model, x, y, eps, m, alpha_iterations=3)) for m in methods}
        exact0 = {m: margin_lower_bounds(model, x, y, 0.0, m, alpha_iterations=2).detach() for m in methods}
        out[arch] = (model, x, y, eps, res, exact0)
    return out


@pytest.mark.parametrize("arch", ["mlp", "cnn_small"])
def test_every_method_is_sound_and_certified_implies_correct(method_results, arch):
    model, x, y, eps, res, exact0 = method_results[arch]
    correct = model(x).argmax(1) == y
    lo, hi = input_box(x, eps)
    gen = torch.Generator().manual_seed(0)
    points = torch.cat([lo + (hi - lo) * torch.rand(x.shape, generator=gen) for _ in range(20)]
                       + [torch.where(torch.rand(x.shape, generator=gen) < 0.5, lo, hi) for _ in range(20)])
    sampled = exact_margins(model, points, y.repeat(40)).view(40, *res["ibp"][0].shape).amin(0)
    exact = exact_margins(model, x, y)
    for method, (lower, v) in res.items():
        assert isinstance(v, Verdicts) and lower.shape == (len(y), K - 1)
        tol = 1e-4 * (1 + float(lower.abs().max()))
        assert (lower <= sampled + tol).all(), f"{method} bound above a sampled margin"
        assert not bool((v.certified & ~correct).any()), f"{method} certified a misclassified sample"
        assert (v.min_margin[v.certified] > 0).all()
        assert torch.allclose(exact0[method], exact, rtol=1e-4, atol=1e-4 * float(exact.abs().max())), \
            f"{method} at eps=0 differs from the exact margins"
    assert res["ibp"][1].certified.any() or res["crown"][1].certified.any(), "eps too large to be informative"
    # Guaranteed relations only: own IBP = auto_LiRPA IBP; alpha-CROWN starts at CROWN's slopes and keeps the
    # best bound per element, so it is never looser than CROWN. (CROWN / CROWN-IBP vs IBP: no guarantee.)
    assert torch.equal(res["ibp"][1].certified, res["lirpa-ibp"][1].certified)
    if "alpha-crown" in res:
        crown, alpha = res["crown"][0], res["alpha-crown"][0]
        assert (alpha >= crown - 1e-4 * (1 + float(crown.abs().max()))).all()
