"""alpha-CROWN where CROWN finds a layer fully stable (0.3's empty sparse-spec alpha); cache after a failure.

The shapes are those of the issue (MLPs with and without BatchNorm1d, two-conv networks with and
without BatchNorm2d; one MNIST test image; eps 0.001), with seeds and images found to make
unpatched 0.3 raise ``AssertionError`` in ``BoundRelu._backward_relaxation``: there CROWN finds no
unstable neuron in a later layer's pre-activation while auto_LiRPA's IBP (its reference for which
neurons to refine) finds some.
"""

from __future__ import annotations

import copy

import pytest
import torch
from seeded_models import seeded_init  # tests/bounds/seeded_models.py
from torch import nn

from harness.bounds import fp_tolerance, lirpa, margin_lower_bounds
from harness.bounds.lirpa_compat import _ORIGINALS, BoundedTensor, PerturbationLpNorm
from harness.bounds.spec import spec_matrix
from harness.models import Normalize
from harness.threat_model import input_box

EPS = 0.001
ITERS = 5
# (shape, seed, MNIST test image): each made unpatched 0.3 raise (found by a sweep of 6 seeds x 4 images).
CASES = [("mlp", 0, 0), ("mlp-bn", 0, 3), ("conv", 4, 2), ("conv-bn", 0, 0)]


def _build(shape: str, seed: int) -> nn.Sequential:
    bn = shape.endswith("-bn")
    if shape.startswith("mlp"):
        layers = [Normalize([0.1307], [0.3081]), nn.Flatten()]
        width = 784
        for _ in range(2):
            layers += [nn.Linear(width, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU()]
            width = 16
        layers.append(nn.Linear(16, 10))
    else:
        layers = [Normalize([0.1307], [0.3081])]
        channels = 1
        for out in (4, 8):  # 28 -> 14 -> 7
            layers.append(nn.Conv2d(channels, out, 4, stride=2, padding=1))
            layers += ([nn.BatchNorm2d(out)] if bn else []) + [nn.ReLU()]
            channels = out
        layers += [nn.Flatten(), nn.Linear(8 * 7 * 7, 10)]
    model = nn.Sequential(*layers)
    return seeded_init(model, seed)


@pytest.fixture(scope="module")
def mnist(mnist_test) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = mnist_test
    return x[:4].clone(), y[:4].clone()


def _case(mnist, shape, seed, image):
    x, y = mnist
    return _build(shape, seed), x[image:image + 1], y[image:image + 1]


@pytest.fixture
def unpatched_alpha_init(monkeypatch):
    """Put 0.3's own BoundRelu.init_opt_parameters back (the real code, not a stand-in)."""
    original = _ORIGINALS.get("relu-empty-sparse-alpha")
    if original is None:
        pytest.skip("relu-empty-sparse-alpha not applied: this auto_LiRPA does not need it")
    from auto_LiRPA.operators import BoundRelu

    monkeypatch.setattr(BoundRelu, "init_opt_parameters", original)
    return monkeypatch


def _min_sampled_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int = 200) -> torch.Tensor:
    """Smallest margin (float64 model) over n random points and n random corners of the box."""
    model64 = copy.deepcopy(model).double()
    lo, hi = input_box(x.double(), EPS)
    gen = torch.Generator().manual_seed(3)
    u = torch.rand((2 * n,) + tuple(x.shape[1:]), generator=gen, dtype=torch.float64)
    u[n:] = (u[n:] > 0.5).double()
    points = lo + u * (hi - lo)
    C = spec_matrix(y.repeat(2 * n), 10, torch.float64)
    with torch.no_grad():
        margins = torch.einsum("bkc,bc->bk", C, model64(points))
    return margins.amin(0, keepdim=True)


@pytest.mark.parametrize("shape,seed,image", CASES)
def test_unpatched_0_3_raises_on_these_shapes(mnist, unpatched_alpha_init, shape, seed, image):
    """The next test is a real guard: without the patch each case crashes, and the cache is dropped."""
    model, x, y = _case(mnist, shape, seed, image)
    margin_lower_bounds(model, x, y, EPS, "crown")
    assert model in lirpa._CACHE
    with pytest.raises(AssertionError):
        margin_lower_bounds(model, x, y, EPS, "alpha-crown", alpha_iterations=2)
    assert model not in lirpa._CACHE


@pytest.mark.parametrize("shape,seed,image", CASES)
def test_alpha_crown_sound_and_not_looser_than_crown(mnist, shape, seed, image):
    model, x, y = _case(mnist, shape, seed, image)
    crown = margin_lower_bounds(model, x, y, EPS, "crown")
    alpha = margin_lower_bounds(model, x, y, EPS, "alpha-crown", alpha_iterations=ITERS)
    assert alpha.shape == (1, 9) and torch.isfinite(alpha).all()
    assert (alpha >= crown - 1e-6).all()
    # The padded (empty) sparse-spec alpha was really used: some slope table has every neuron on slot 0.
    relus = lirpa._CACHE[model].bounded.relus
    assert any(lookup is not None and not lookup.any() and relu.alpha[name].shape[1] == 2
               for relu in relus for name, lookup in relu.alpha_lookup_idx.items())
    seen = _min_sampled_margins(model, x, y)
    scale = torch.maximum(alpha.abs().amax(), seen.abs().amax()).double()
    assert (alpha.double() <= seen + fp_tolerance(scale, torch.float32)).all()


def test_failed_call_leaves_nothing_behind(mnist, unpatched_alpha_init):
    """A real auto_LiRPA failure mid-pass, then CROWN on the same model object."""
    model, x, y = _case(mnist, *CASES[0])
    before = margin_lower_bounds(model, x, y, EPS, "crown")
    stale = lirpa._CACHE[model].bounded
    with pytest.raises(AssertionError):
        margin_lower_bounds(model, x, y, EPS, "alpha-crown", alpha_iterations=2)
    unpatched_alpha_init.undo()
    # What the cache held is poisoned (its ReLUs are left in alpha-CROWN's optimisation stage): the
    # issue's failure, so the eviction below is what makes the next call work.
    C = spec_matrix(y, 10)
    mean, std = 0.1307, 0.3081
    lo, hi = input_box(x, EPS)
    ptb = PerturbationLpNorm(eps=EPS, x_L=(lo - mean) / std, x_U=(hi - mean) / std)
    with pytest.raises((AssertionError, RuntimeError)), torch.no_grad():
        stale.compute_bounds(x=(BoundedTensor((x - mean) / std, ptb),), C=C, method="CROWN",
                             bound_upper=False)
    after = margin_lower_bounds(model, x, y, EPS, "crown")
    assert lirpa._CACHE[model].bounded is not stale
    assert torch.equal(after, before)
    assert torch.equal(after, margin_lower_bounds(copy.deepcopy(model), x, y, EPS, "crown"))
