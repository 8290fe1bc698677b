"""harness.bounds.lirpa.lirpa_relu_bounds: auto_LiRPA's pre-activation bounds of every ReLU.

Real MNIST test images: whole for the MLP, the central 10x10 crop of one for cnn_small (full-size
alpha-CROWN on cnn_small takes tens of seconds on two cores). Soundness is probed at 200 random
points of each box and, for every ReLU input neuron, at the two corners its gradient at the box
center points to (which attain the exact extremes in the first layer).
"""

from __future__ import annotations

import copy

import pytest
import torch
from seeded_models import seeded_init  # tests/bounds/seeded_models.py
from torch import nn

from harness.bounds import fp_tolerance, ibp_bounds
from harness.bounds.lirpa import lirpa_relu_bounds
from harness.models import Normalize, build_model
from harness.threat_model import input_box

EPS = 0.02
ITERS = 4
MEAN, STD = [0.1307], [0.3081]


def _init_(model: nn.Module, seed: int) -> nn.Module:
    return seeded_init(model, seed)


@pytest.fixture(scope="module")
def mnist(mnist_test) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = mnist_test
    return x[:2].clone(), y[:2].clone()


@pytest.fixture(scope="module")
def cases(mnist) -> dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    x, y = mnist
    crop = x[:1, :, 9:19, 9:19].contiguous()
    return {
        "cnn_small": (_init_(build_model("cnn_small", (1, 10, 10), 10, MEAN, STD), 1), crop, y[:1]),
        "mlp": (_init_(build_model("mlp", (1, 28, 28), 10, MEAN, STD, width=32), 2), x, y),
    }


@pytest.fixture(scope="module")
def bounds(cases) -> dict[tuple[str, str], list[tuple[torch.Tensor, torch.Tensor]]]:
    return {(name, method): lirpa_relu_bounds(model, x, y, EPS, method, alpha_iterations=ITERS)
            for name, (model, x, y) in cases.items() for method in ("crown", "alpha-crown")}


def _own_ibp(model, x):
    lo, hi = input_box(x, EPS)
    with torch.no_grad():
        return ibp_bounds(model, lo, hi).preact


def _preacts(model: nn.Module, points: torch.Tensor) -> list[torch.Tensor]:
    """Every ReLU input of model(points), in forward order (differentiable)."""
    seen = []
    handles = [m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
               for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        model(points)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("name", ["cnn_small", "mlp"])
@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_shapes_match_own_ibp(cases, bounds, name, method):
    model, x, _ = cases[name]
    ours, ibp = bounds[(name, method)], _own_ibp(model, x)
    assert len(ours) == len(ibp) == sum(isinstance(m, nn.ReLU) for m in model.modules())
    for (lo, up), (ilo, iup) in zip(ours, ibp):
        assert lo.shape == up.shape == ilo.shape
        assert lo.dtype == x.dtype and lo.device == x.device and not lo.requires_grad and not up.requires_grad
        assert (lo <= up).all()


def _probe_points(model64: nn.Module, center: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                  gen: torch.Generator) -> torch.Tensor:
    """200 random points of the box (half of them corners), and for every ReLU input neuron the two
    corners its gradient at the center points to (its exact extremes in the first layer)."""
    u = torch.rand((200,) + tuple(center.shape), generator=gen, dtype=torch.float64)
    u[100:] = (u[100:] > 0.5).double()

    # The Jacobian in one backward pass: copy k of the center gets the gradient of neuron k.
    with torch.no_grad():
        neurons = sum(z[0].numel() for z in _preacts(model64, center.unsqueeze(0)))
    copies = center.expand(neurons, *center.shape).clone().requires_grad_(True)
    flat = torch.cat([z.flatten(1) for z in _preacts(model64, copies)], dim=1)
    (jac,) = torch.autograd.grad(flat.diagonal().sum(), copies)  # (neurons, *input shape)
    up = torch.where(jac > 0, hi, lo)
    down = torch.where(jac > 0, lo, hi)
    return torch.cat([lo + u * (hi - lo), up, down])


@pytest.fixture(scope="module")
def probed(cases) -> dict[str, list[list[torch.Tensor]]]:
    """Per case and sample: the ReLU inputs (float64 model, Normalize included) at its probe points."""
    out = {}
    gen = torch.Generator().manual_seed(5)
    for name, (model, x, _) in cases.items():
        model64 = copy.deepcopy(model).double()
        lo, hi = input_box(x.double(), EPS)
        out[name] = []
        for b in range(x.shape[0]):
            points = _probe_points(model64, x[b].double(), lo[b], hi[b], gen)
            with torch.no_grad():
                out[name].append(_preacts(model64, points))
    return out


@pytest.mark.parametrize("name", ["cnn_small", "mlp"])
@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_sampled_preactivations_inside(bounds, probed, name, method):
    for b, z in enumerate(probed[name]):
        for k, ((low, up), zk) in enumerate(zip(bounds[(name, method)], z)):
            low, up = low[b].double(), up[b].double()
            tol = fp_tolerance(torch.maximum(low.abs().max(), up.abs().max()), torch.float32)
            assert (zk >= low - tol).all(), f"ReLU {k}: below the lower bound by {(low - zk).max():.3g}"
            assert (zk <= up + tol).all(), f"ReLU {k}: above the upper bound by {(zk - up).max():.3g}"


@pytest.mark.parametrize("name", ["cnn_small", "mlp"])
def test_crown_not_looser_than_own_ibp_and_tighter_somewhere(cases, bounds, name):
    model, x, _ = cases[name]
    gain = []
    for (lo, up), (ilo, iup) in zip(bounds[(name, "crown")], _own_ibp(model, x)):
        tol = fp_tolerance(torch.maximum(ilo.abs().max(), iup.abs().max()).double(), torch.float32)
        assert (lo.double() >= ilo.double() - tol).all() and (up.double() <= iup.double() + tol).all()
        gain.append(float(torch.maximum(lo - ilo, iup - up).max()))
    assert gain[0] < 1e-4  # the first layer: IBP is exact there
    assert max(gain[1:]) > 1e-2, gain  # later layers: CROWN is strictly tighter somewhere


@pytest.mark.parametrize("name", ["cnn_small", "mlp"])
def test_alpha_crown_tightens_intermediate_bounds(bounds, name):
    """0.3 keeps the intersection of the intermediate bounds of the iterations that improved the margins."""
    gain = []
    for (lo, up), (clo, cup) in zip(bounds[(name, "alpha-crown")], bounds[(name, "crown")]):
        assert (lo >= clo - 1e-5).all() and (up <= cup + 1e-5).all()
        gain.append(float(torch.maximum(lo - clo, cup - up).max()))
    assert max(gain) > 1e-3, gain


def test_other_methods_and_batching(cases):
    model, x, y = cases["cnn_small"]
    ibp = _own_ibp(model, x)
    for method in ("lirpa-ibp", "crown-ibp"):  # auto_LiRPA's IBP for every intermediate layer
        for (lo, up), (ilo, iup) in zip(lirpa_relu_bounds(model, x, y, EPS, method), ibp):
            torch.testing.assert_close(lo, ilo, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(up, iup, atol=1e-5, rtol=1e-5)
    # Chunks of one sample give each sample's own pass. (Not the full-batch bounds: auto_LiRPA refines,
    # for a whole chunk, every neuron its IBP finds unstable in any sample of it.)
    model, x, y = cases["mlp"]
    chunked = lirpa_relu_bounds(model, x, y, EPS, "crown", batch_size=1)
    for i in range(x.shape[0]):
        alone = lirpa_relu_bounds(model, x[i:i + 1], y[i:i + 1], EPS, "crown")
        for (lo, up), (alo, aup) in zip(chunked, alone):
            assert torch.equal(lo[i:i + 1], alo) and torch.equal(up[i:i + 1], aup)


def test_float64_and_empty_batch(cases):
    model, x, y = cases["mlp"]
    out = lirpa_relu_bounds(copy.deepcopy(model).double(), x[:1].double(), y[:1], EPS, "crown")
    assert [lo.dtype for lo, _ in out] == [torch.float64] * 2
    empty = lirpa_relu_bounds(model, x[:0], y[:0], EPS, "crown")
    assert [tuple(lo.shape) for lo, _ in empty] == [(0, 32), (0, 32)]
    with pytest.raises(ValueError, match="unknown bound method"):
        lirpa_relu_bounds(model, x, y, EPS, "beta-crown")


class _FunctionalReLU(nn.Module):
    def forward(self, t):
        return torch.relu(t)


def test_unmappable_models_fail_loudly():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 1, 2, 2, generator=gen), torch.tensor([0, 1])
    # A ReLU applied functionally has no module to report bounds for.
    net = _init_(nn.Sequential(Normalize([0.5], [0.25]), nn.Flatten(), nn.Linear(4, 4), _FunctionalReLU(),
                               nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), 0)
    with pytest.raises(RuntimeError, match="1 nn.ReLU call.*use nn.ReLU modules"):
        lirpa_relu_bounds(net, x, y, 0.01, "crown")
    # Two ReLUs whose inputs are equal at every input in [0, 1]: which node is which cannot be told.
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    net.eval()
    with torch.no_grad():
        for layer in (net[1], net[3]):
            layer.weight.copy_(torch.eye(4))
            layer.bias.zero_()
        net[5].weight.uniform_(-1, 1, generator=gen)
    with pytest.raises(RuntimeError, match="matches 2"):
        lirpa_relu_bounds(net, x, y, 0.01, "crown")
