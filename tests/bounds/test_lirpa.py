"""harness.bounds.lirpa: auto_LiRPA margin bounds (IBP, CROWN-IBP, CROWN, alpha-CROWN).

Tiny models (cnn_small on 10x10 inputs) keep alpha-CROWN affordable on two CPU cores; one test uses
the MNIST-shaped cnn_small.
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch

from harness.bounds import lirpa, spec
from harness.bounds.lirpa import LIRPA_METHODS, lirpa_margin_bounds
from harness.bounds.lirpa_compat import _ORIGINALS, BoundedModule, BoundedTensor, PerturbationLpNorm
from harness.models import build_model
from harness.threat_model import input_box

MEAN, STD = [0.1307], [0.3081]
SHAPE = (1, 10, 10)
EPS = 0.05
ALPHA_ITERS = 8


def _tiny_model(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    model = build_model("cnn_small", SHAPE, 10, MEAN, STD)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the BN layers are really exercised
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> torch.nn.Sequential:
    return _tiny_model()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand((3,) + SHAPE, generator=gen), torch.tensor([0, 4, 9])


@pytest.fixture(scope="module")
def bounds32(model, data) -> dict[str, torch.Tensor]:
    x, y = data
    return {m: lirpa_margin_bounds(model, x, y, EPS, m, alpha_iterations=ALPHA_ITERS) for m in LIRPA_METHODS}


@pytest.fixture(scope="module")
def model64(model) -> torch.nn.Sequential:
    return copy.deepcopy(model).double()


@pytest.fixture(scope="module")
def bounds64(model64, data) -> dict[str, torch.Tensor]:
    x, y = data
    return {m: lirpa_margin_bounds(model64, x.double(), y, EPS, m, alpha_iterations=ALPHA_ITERS)
            for m in LIRPA_METHODS}


def _margins(model, x, y) -> torch.Tensor:
    """(B, K-1) margins z_y - z_j at x, in spec_matrix order."""
    C = spec.spec_matrix(y, 10, dtype=x.dtype)
    return torch.einsum("bkc,bc->bk", C, model(x))


# ---- shapes and ordering ---------------------------------------------------------------------------


def test_all_methods_on_mnist_cnn_small():
    torch.manual_seed(0)
    model = build_model("cnn_small", (1, 28, 28), 10, MEAN, STD).eval()
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([3, 7])
    out = {m: lirpa_margin_bounds(model, x, y, 0.005, m, alpha_iterations=3) for m in LIRPA_METHODS}
    for m, b in out.items():
        assert b.shape == (2, 9) and b.dtype == torch.float32 and torch.isfinite(b).all(), m
        assert not b.requires_grad
    with torch.no_grad():
        assert (out["crown"] <= _margins(model, x, y) + 1e-5).all()
    assert (out["alpha-crown"] >= out["crown"] - 1e-6).all()


def test_shapes_dtypes(bounds32, bounds64):
    for m in LIRPA_METHODS:
        assert bounds32[m].shape == (3, 9) and bounds32[m].dtype == torch.float32
        assert bounds64[m].shape == (3, 9) and bounds64[m].dtype == torch.float64
        assert torch.isfinite(bounds32[m]).all() and torch.isfinite(bounds64[m]).all()
        # float32 and float64 bound the same thing
        torch.testing.assert_close(bounds32[m].double(), bounds64[m], atol=1e-4, rtol=1e-4)


def test_eps_zero_gives_the_margins(model, data):
    x, y = data
    with torch.no_grad():
        exact = _margins(model, x, y)
    for m in ("lirpa-ibp", "crown"):
        torch.testing.assert_close(lirpa_margin_bounds(model, x, y, 0.0, m), exact, atol=1e-4, rtol=1e-4)


# ---- tightness ------------------------------------------------------------------------------------


def test_alpha_crown_at_least_crown_and_strictly_tighter_somewhere(bounds32, bounds64):
    for b in (bounds32, bounds64):
        gain = b["alpha-crown"] - b["crown"]
        assert (gain >= -1e-6).all()
        assert gain.max() > 1e-4  # fails when the ReLU slopes never move (torch 2.14 clamp gradient)


def test_alpha_crown_equals_crown_without_the_clamp_patch(model, data, bounds32, monkeypatch):
    """Shows the previous test guards failure 5: with 0.3's own clamp, no slope moves on this torch."""
    original = _ORIGINALS.get("relu-alpha-clamp")
    if original is None:
        pytest.skip("relu-alpha-clamp not needed on this torch")
    from auto_LiRPA.operators import BoundRelu

    monkeypatch.setattr(BoundRelu, "_relu_mask_alpha", original)
    x, y = data
    frozen = lirpa_margin_bounds(model, x, y, EPS, "alpha-crown", alpha_iterations=3)
    assert (frozen - bounds32["crown"]).abs().max() < 1e-5


def test_crown_and_crown_ibp_tighter_than_ibp_on_average(bounds32):
    # Not a theorem elementwise, but robust on random networks (IBP is loose by a wide margin here).
    assert bounds32["crown"].mean() > bounds32["lirpa-ibp"].mean()
    assert bounds32["crown-ibp"].mean() > bounds32["lirpa-ibp"].mean()
    assert bounds32["crown"].mean() > bounds32["crown-ibp"].mean()


# ---- soundness ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def empirical_min64(model64, data) -> torch.Tensor:
    """Smallest margin seen per (sample, wrong class): random points, random corners, PGD points."""
    x, y = data
    x, K = x.double(), 9
    lo, hi = input_box(x, EPS)
    gen = torch.Generator().manual_seed(2)
    best = torch.full((x.shape[0], K), float("inf"), dtype=torch.float64)
    with torch.no_grad():
        for corners in (False, True):
            for _ in range(100):
                u = torch.rand(x.shape, generator=gen, dtype=torch.float64)
                if corners:
                    u = (u > 0.5).double()
                best = torch.minimum(best, _margins(model64, lo + u * (hi - lo), y))
    # PGD on every margin separately: one copy of each input per wrong class.
    xs = x.repeat_interleave(K, 0)
    ys = y.repeat_interleave(K, 0)
    los, his = lo.repeat_interleave(K, 0), hi.repeat_interleave(K, 0)
    col = torch.arange(K).repeat(x.shape[0])
    for start in range(2):
        u = torch.rand(xs.shape, generator=gen, dtype=torch.float64)
        z = (los + u * (his - los)) if start else xs.clone()
        for _ in range(15):
            z.requires_grad_(True)
            m = _margins(model64, z, ys)[torch.arange(len(col)), col]
            (g,) = torch.autograd.grad(m.sum(), z)
            with torch.no_grad():
                z = torch.minimum(torch.maximum(z - (EPS / 4) * g.sign(), los), his)
            with torch.no_grad():
                seen = _margins(model64, z, ys)[torch.arange(len(col)), col].view(x.shape[0], K)
            best = torch.minimum(best, seen)
    return best


@pytest.mark.parametrize("method", LIRPA_METHODS)
def test_sound_in_float64(method, bounds64, empirical_min64):
    lower = bounds64[method]
    gap = empirical_min64 - lower
    assert (gap >= -1e-9).all(), f"{method}: bound above an attained margin by {-gap.min().item():.3g}"


def test_bounds_are_not_vacuous(bounds64, empirical_min64):
    # alpha-CROWN is close on this tiny network: the soundness check is not trivially satisfied.
    assert (empirical_min64 - bounds64["alpha-crown"]).max() < 5.0


# ---- batching, caching, and the caller's model -------------------------------------------------------


def test_batch_size_chunks_match_one_pass(model, data, bounds32):
    x, y = data
    for m in ("lirpa-ibp", "crown-ibp", "crown"):
        torch.testing.assert_close(lirpa_margin_bounds(model, x, y, EPS, m, batch_size=2), bounds32[m],
                                   atol=1e-5, rtol=1e-5)


def test_cache_reused_and_refreshed_after_training_steps(data):
    x, y = data
    model = _tiny_model(seed=3)
    first = lirpa_margin_bounds(model, x, y, EPS, "crown")
    entry = lirpa._CACHE[model]
    lirpa_margin_bounds(model, x, y, EPS, "lirpa-ibp")
    assert lirpa._CACHE[model] is entry  # same BoundedModule reused
    with torch.no_grad():  # what a training step does: in-place weight and BN statistic updates
        model[1].weight.mul_(0.8)
        model[2].running_mean.add_(0.1)
        model[-1].bias.add_(0.5)
    after = lirpa_margin_bounds(model, x, y, EPS, "crown")
    assert lirpa._CACHE[model] is entry
    fresh = lirpa_margin_bounds(copy.deepcopy(model), x, y, EPS, "crown")  # a new object: new build
    torch.testing.assert_close(after, fresh, atol=0, rtol=0)
    assert not torch.allclose(first, after)
    # another input shape invalidates the entry
    lirpa_margin_bounds(model, x[:, :, :8, :8], y, EPS, "lirpa-ibp")
    assert lirpa._CACHE[model] is not entry


def test_cache_does_not_keep_models_alive(data):
    x, y = data
    model = _tiny_model(seed=6)
    lirpa_margin_bounds(model, x, y, EPS, "lirpa-ibp")
    ref = weakref.ref(model)
    assert model in lirpa._CACHE
    del model
    gc.collect()
    assert ref() is None


def test_caller_model_untouched(data):
    x, y = data
    model = _tiny_model(seed=4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ptrs = [p.data_ptr() for p in model.parameters()]
    flags = [m.training for m in model.modules()]
    x = x.clone().requires_grad_(True)
    lirpa_margin_bounds(model, x, y, EPS, "alpha-crown", alpha_iterations=3)
    assert x.grad is None
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert ptrs == [p.data_ptr() for p in model.parameters()]
    assert flags == [m.training for m in model.modules()]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.get_default_dtype() == torch.float32


def test_works_under_no_grad(model, data, bounds32):
    x, y = data
    with torch.no_grad():
        out = lirpa_margin_bounds(model, x[:1], y[:1], EPS, "alpha-crown", alpha_iterations=3)
    assert (out >= bounds32["crown"][:1] - 1e-6).all()


def test_empty_batch(model):
    out = lirpa_margin_bounds(model, torch.rand((0,) + SHAPE), torch.zeros(0, dtype=torch.long), EPS, "crown")
    assert out.shape == (0, 9)


# ---- many unstable ReLUs: 0.3's reconstruct_full_alpha bug (failure 6) ------------------------------


def test_alpha_crown_with_almost_all_conv_relus_unstable(model, data):
    x, y = data
    x, y = x[:2], y[:2]
    crown = lirpa_margin_bounds(model, x, y, 0.5, "crown")
    alpha = lirpa_margin_bounds(model, x, y, 0.5, "alpha-crown", alpha_iterations=3)
    assert alpha.shape == (2, 9) and torch.isfinite(alpha).all()
    assert (alpha >= crown - 1e-5).all()


def test_that_case_does_trigger_the_bug_with_sparse_features_alpha(model, data):
    """The previous test is a real guard: 0.3's default option fails on the same case."""
    x, y = data
    x, y = x[:2], y[:2]
    body = copy.deepcopy(model[1:]).eval()
    bounded = BoundedModule(body, torch.zeros((2,) + SHAPE), bound_opts={"sparse_features_alpha": True})
    bounded.set_bound_opts({"optimize_bound_args": {"iteration": 2}})
    lo, hi = input_box(x, 0.5)
    lo, hi = (lo - MEAN[0]) / STD[0], (hi - MEAN[0]) / STD[0]
    bx = BoundedTensor((lo + hi) / 2, PerturbationLpNorm(eps=0.5, x_L=lo, x_U=hi))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        bounded.compute_bounds(x=(bx,), C=spec.spec_matrix(y, 10), method="alpha-CROWN", bound_upper=False)


# ---- bad input --------------------------------------------------------------------------------------


def test_bad_inputs(model, data):
    x, y = data
    with pytest.raises(ValueError, match="unknown bound method .*lirpa-ibp, crown-ibp, crown, alpha-crown"):
        lirpa_margin_bounds(model, x, y, EPS, "beta-crown")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        lirpa_margin_bounds(model, x, y, -0.1, "crown")
    with pytest.raises(ValueError, match=r"inputs must lie in \[0, 1\]"):
        lirpa_margin_bounds(model, x + 1.5, y, EPS, "crown")
    with pytest.raises(ValueError, match="batch size mismatch"):
        lirpa_margin_bounds(model, x, y[:2], EPS, "crown")
    with pytest.raises(ValueError, match="labels must lie in"):
        lirpa_margin_bounds(model, x, torch.tensor([0, 1, 10]), EPS, "crown")
    with pytest.raises(ValueError, match="dtype"):
        lirpa_margin_bounds(model, x.double(), y, EPS, "crown")
    with pytest.raises(ValueError, match="batch_size"):
        lirpa_margin_bounds(model, x, y, EPS, "crown", batch_size=0)
    with pytest.raises(ValueError, match="alpha_iterations"):
        lirpa_margin_bounds(model, x, y, EPS, "alpha-crown", alpha_iterations=0)


def test_train_mode_rejected(data):
    x, y = data
    model = _tiny_model(seed=5).train()
    with pytest.raises(ValueError, match=r"eval mode .*model\.eval\(\)"):
        lirpa_margin_bounds(model, x, y, EPS, "crown")
    model.eval()
    model[2].train()  # one BatchNorm left in training mode is enough to be wrong
    with pytest.raises(ValueError, match="eval mode"):
        lirpa_margin_bounds(model, x, y, EPS, "crown")


@pytest.mark.cuda
def test_cuda_matches_cpu(model, data, bounds32):
    x, y = data
    gpu = copy.deepcopy(model).cuda()
    for m in ("lirpa-ibp", "crown"):
        out = lirpa_margin_bounds(gpu, x.cuda(), y.cuda(), EPS, m)
        assert out.device.type == "cuda"
        torch.testing.assert_close(out.cpu(), bounds32[m], atol=1e-4, rtol=1e-4)
