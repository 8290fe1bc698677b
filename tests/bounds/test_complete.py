"""Complete verification (harness.bounds.complete): exact minima, verdict rules, soundness, bad input."""

from __future__ import annotations

import copy
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from harness.attacks import pgd_robust
from harness.bounds import fp_tolerance, ibp_bounds, margin_lower_bounds, rounding_scale
from harness.bounds.complete import verify_sample
from harness.bounds.milp import MILPNetwork, intersect_relu_bounds
from harness.models import Normalize
from harness.threat_model import inner_box32 as _inner_box32
from harness.threat_model import input_box
from harness.threat_model import outward_box64 as _milp_box


def mlp(sizes: list[int], seed: int, norm=((0.5,), (0.25,)), batchnorm: bool = False) -> nn.Sequential:
    """Normalize, Flatten, then Linear (+ BatchNorm1d) + ReLU per hidden size, seeded, in eval mode."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [Normalize(*norm), nn.Flatten()]
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b)] + ([nn.BatchNorm1d(b)] if batchnorm else []) + [nn.ReLU()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    model = nn.Sequential(*layers)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
    return model.eval()


def conv_bn_pool(seed: int) -> nn.Sequential:
    """Normalize, Conv2d, BatchNorm2d, ReLU, AvgPool2d, Flatten, Linear, BatchNorm1d, ReLU, Linear."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        Normalize((0.45,), (0.3,)), nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(27, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
    return model.eval()


def ibp_preact(model, x, eps):
    lo, hi = input_box(x.unsqueeze(0), eps)
    with torch.no_grad():
        return ibp_bounds(model, lo, hi).preact


def exact_minima(model, net, x, y, eps, bounds=None):
    """{j: (lower, upper, result)} of z_y - z_j with every class solved to optimality."""
    res = verify_sample(net, model, x, y, eps, ibp_preact(model, x, eps) if bounds is None else bounds,
                        early_stop=False)
    return {c.target: c for c in res.classes}, res


def margins64(model, pts: torch.Tensor, y: int) -> torch.Tensor:
    """z_y - z_j (float64) for every point (rows) and class j (columns, y's column is +inf)."""
    with torch.no_grad():
        z = copy.deepcopy(model).double()(pts.double())
    m = z[:, y:y + 1] - z
    m[:, y] = math.inf
    return m


# ------------------------------------------------------------------------------ exact minima vs brute force
def test_exact_minimum_matches_a_fine_grid_on_a_2d_input():
    model = mlp([2, 8, 8, 3], seed=4)
    net = MILPNetwork.from_model(model, (1, 1, 2))
    x, eps = torch.tensor([[[0.45, 0.6]]]), 0.3
    y = int(model(x.unsqueeze(0)).argmax())
    classes, _ = exact_minima(model, net, x, y, eps)
    # Grid over the box with spacing h; the margin is L-Lipschitz in l_inf, so the true minimum lies
    # within L h / 2 below the grid minimum.
    n = 1201
    axes = [torch.linspace(max(float(v) - eps, 0.0), min(float(v) + eps, 1.0), n, dtype=torch.float64)
            for v in x.flatten()]
    h = max(float(a[1] - a[0]) for a in axes)
    grid = torch.cartesian_prod(*axes).view(-1, 1, 1, 2)
    grid_min = margins64(model, grid, y).amin(0)
    for j, c in classes.items():
        W = [m.weight.detach().double().abs() for m in model if isinstance(m, nn.Linear)]
        sens = (W[2][y] + W[2][j]) @ W[1] @ W[0] / 0.25
        lip = float(sens.sum())
        assert c.verdict != "unknown" and abs(c.upper_bound - c.lower_bound) < 1e-7
        assert c.lower_bound <= float(grid_min[j]) + 1e-9
        assert c.lower_bound >= float(grid_min[j]) - lip * h / 2 - 1e-9
        # The minimum is attained: the solver's input has (in float64) the margin it reports.
        attained = margins64(model, c.solution.view(1, 1, 1, 2), y)[0, j]
        assert abs(float(attained) - c.upper_bound) < 1e-7
    assert min(c.lower_bound for c in classes.values()) < 0 < max(c.lower_bound for c in classes.values())


def pattern_minima(model: nn.Sequential, x: torch.Tensor, y: int, eps: float) -> dict[int, float]:
    """Exact minima by enumerating every activation pattern: one LP (scipy linprog) per pattern and class.

    Independent of the encoding: the affine pieces come from the torch weights, not from MILPNetwork.
    """
    norm = model[0]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    W = [m.weight.double().detach().numpy() for m in linears]
    b = [m.bias.double().detach().numpy() for m in linears]
    n = W[0].shape[1]
    # x -> (x - mean) / std as an affine map of the input.
    s = 1.0 / float(norm.std.flatten()[0])
    A0, c0 = np.eye(n) * s, -np.full(n, float(norm.mean.flatten()[0])) * s
    lo = np.clip(x.double().flatten().numpy() - eps, 0, 1)
    hi = np.clip(x.double().flatten().numpy() + eps, 0, 1)
    widths = [w.shape[0] for w in W[:-1]]
    best = {j: math.inf for j in range(W[-1].shape[0]) if j != y}
    for pattern in itertools.product([0, 1], repeat=sum(widths)):
        A, c = A0, c0  # the current layer's input as A x + c
        rows, rhs = [], []
        pos = 0
        for k, width in enumerate(widths):
            zA, zc = W[k] @ A, W[k] @ c + b[k]
            p = np.array(pattern[pos:pos + width], dtype=float)
            pos += width
            sign = 2 * p - 1  # active: z >= 0, i.e. -z <= 0; inactive: z <= 0
            rows.append(-sign[:, None] * zA)
            rhs.append(sign * zc)
            A, c = p[:, None] * zA, p * zc
        zA, zc = W[-1] @ A, W[-1] @ c + b[-1]
        for j in best:
            res = linprog(zA[y] - zA[j], A_ub=np.vstack(rows), b_ub=np.concatenate(rhs),
                          bounds=list(zip(lo, hi)), method="highs")
            if res.status == 0:
                best[j] = min(best[j], res.fun + zc[y] - zc[j])
    return best


def test_exact_minimum_matches_enumerated_activation_patterns():
    model = mlp([3, 4, 3, 3], seed=5)
    net = MILPNetwork.from_model(model, (1, 1, 3))
    x, eps = torch.tensor([[[0.3, 0.7, 0.5]]]), 0.25
    y = int(model(x.unsqueeze(0)).argmax())
    expected = pattern_minima(model, x, y, eps)
    classes, res = exact_minima(model, net, x, y, eps)
    assert sum(c[2] for c in res.counts) >= 3  # the program really branches
    for j, value in expected.items():
        assert abs(classes[j].lower_bound - value) < 1e-7 and abs(classes[j].upper_bound - value) < 1e-7

    # The comparison catches an unsound encoding: bounds that exclude reachable pre-activations (here
    # the clean point's exact values) give a different "minimum".
    with torch.no_grad():
        z1 = model[2](model[1](model[0](x.unsqueeze(0))))
        z2 = model[4](model[3](z1))
    tight = [(z1 - 1e-3, z1 + 1e-3), (z2 - 1e-3, z2 + 1e-3)]
    wrong, _ = exact_minima(model, net, x, y, eps, bounds=tight)
    assert max(abs(wrong[j].lower_bound - v) for j, v in expected.items()) > 1e-3


# ------------------------------------------------------------------------- other certifiers are sound
@pytest.mark.parametrize("kind", ["conv", "mlp"])
def test_every_certifier_bound_is_at_most_the_exact_minimum(kind):
    if kind == "conv":
        model, shape, eps = conv_bn_pool(seed=7), (1, 6, 6), 0.04
    else:
        model, shape, eps = mlp([16, 10, 8, 4], seed=8, batchnorm=True), (1, 4, 4), 0.08
    net = MILPNetwork.from_model(model, shape)
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(shape, generator=gen)
    y = int(model(x.unsqueeze(0)).argmax())
    classes, res = exact_minima(model, net, x, y, eps)
    assert sum(c[2] for c in res.counts) > 0
    exact = torch.tensor([classes[j].lower_bound for j in sorted(classes)], dtype=torch.float64)
    upper = torch.tensor([classes[j].upper_bound for j in sorted(classes)], dtype=torch.float64)
    assert torch.all((upper - exact).abs() < 1e-6)  # solved to optimality
    for c in classes.values():  # attained by the solver's input
        assert abs(float(margins64(model, c.solution.unsqueeze(0), y)[0, c.target]) - c.upper_bound) < 1e-6
    band = float(fp_tolerance(rounding_scale(model, x.unsqueeze(0), torch.tensor([y]), eps), torch.float32)[0])
    tightest = None
    for method in ("ibp", "crown-ibp", "crown", "alpha-crown", "lp-dual"):
        bound = margin_lower_bounds(model, x.unsqueeze(0), torch.tensor([y]), eps, method,
                                    alpha_iterations=5)[0].detach().double()
        assert torch.all(bound <= exact + band), (method, bound, exact)
        tightest = bound if tightest is None else torch.maximum(tightest, bound)
    # The exact minimum is what the relaxations approach from below: the gap is real but finite.
    assert float((exact - tightest).max()) > 1e-4


# ----------------------------------------------------------------------------------- verdict rules
def constant_margin_model(delta: float) -> nn.Sequential:
    """Two logits z0 = x0 + delta, z1 = x0: the margin z0 - z1 is delta everywhere (an LP, no ReLU)."""
    model = nn.Sequential(Normalize((0.0,), (1.0,)), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
        model[2].bias.copy_(torch.tensor([delta, 0.0]))
    return model.eval()


@pytest.mark.parametrize("delta,verdict", [(1e-3, "verified"), (1e-7, "unknown"), (-1e-3, "counterexample")])
def test_verified_needs_the_bound_above_the_band(delta, verdict):
    model = constant_margin_model(delta)
    net = MILPNetwork.from_model(model, (1, 1, 2))
    x = torch.tensor([[[0.5, 0.5]]])
    res = verify_sample(net, model, x, 0, 0.1, [], margin_lower=torch.tensor([-1.0]))
    # A positive margin of 1e-7 is below the rounding band: proven > 0 in exact arithmetic, but not
    # beyond what float32 bounds and solver tolerances could blur, so it stays unknown.
    assert res.verdict == verdict, res
    assert 0 < res.band < 1e-3
    assert abs(res.classes[0].lower_bound - float(torch.tensor(delta))) < 1e-9 or verdict == "counterexample"


def test_counterexample_is_misclassified_and_inside_the_box():
    model = mlp([16, 12, 12, 4], seed=2)
    net = MILPNetwork.from_model(model, (1, 4, 4))
    x = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(3))
    y, eps = int(model(x.unsqueeze(0)).argmax()), 0.2
    res = verify_sample(net, model, x, y, eps, ibp_preact(model, x, eps))
    assert res.verdict == "counterexample" and res.counterexample.dtype == torch.float32
    cex = res.counterexample
    for m, dtype in ((model, torch.float32), (net.model64, torch.float64)):
        with torch.no_grad():
            z = m(cex.to(dtype).unsqueeze(0))[0]
        assert float(torch.cat([z[:y], z[y + 1:]]).max()) >= float(z[y])
    assert torch.all(cex.double() >= (x.double() - eps).clamp(min=0)) and torch.all(cex.double() <= (x.double() + eps).clamp(max=1))
    assert [c.verdict for c in res.classes].count("counterexample") == 1  # the sample stopped there


def test_verified_sample_survives_pgd_and_dense_sampling():
    model = mlp([16, 12, 12, 4], seed=2)
    net = MILPNetwork.from_model(model, (1, 4, 4))
    x = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(3))
    y, eps = int(model(x.unsqueeze(0)).argmax()), 0.05
    res = verify_sample(net, model, x, y, eps, ibp_preact(model, x, eps))
    assert res.verdict == "verified" and res.min_lower_bound > res.band
    assert any(c.verdict == "verified" for c in res.classes)  # the solver decided at least one class
    with torch.random.fork_rng():
        torch.manual_seed(0)
        assert bool(pgd_robust(model, x.unsqueeze(0), torch.tensor([y]), eps, steps=50, restarts=3)[0])
    gen = torch.Generator().manual_seed(4)
    lo, hi = input_box(x.unsqueeze(0).double(), eps)
    pts = lo + (hi - lo) * torch.rand(20000, 1, 4, 4, generator=gen, dtype=torch.float64)
    corners = torch.where(torch.rand(5000, 1, 4, 4, generator=gen) < 0.5, lo, hi)
    assert float(margins64(model, torch.cat([pts, corners]), y).min()) > 0


def test_verdicts_are_reproducible_and_the_node_limit_is_deterministic():
    model = mlp([16, 12, 12, 4], seed=2)
    net = MILPNetwork.from_model(model, (1, 4, 4))
    x = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(3))
    y, eps = int(model(x.unsqueeze(0)).argmax()), 0.2
    pre = ibp_preact(model, x, eps)
    runs = [verify_sample(net, model, x, y, eps, pre, early_stop=False, node_limit=25) for _ in range(2)]
    key = [[(c.verdict, c.lower_bound, c.upper_bound, c.nodes) for c in r.classes] for r in runs]
    assert key[0] == key[1]
    assert runs[0].nodes <= 25 + len(runs[0].classes)  # a solve may finish the node it is in
    assert any("node limit" in c.reason for c in runs[0].classes)
    stopped = verify_sample(net, model, x, y, eps, pre, node_limit=0, early_stop=False)
    assert stopped.verdict != "verified"
    # HiGHS keeps one thread pool per process: another thread count must still solve (same answers here).
    for threads in (2, 1):
        again = verify_sample(net, model, x, y, eps, pre, early_stop=False, node_limit=25, threads=threads)
        assert [c.lower_bound for c in again.classes] == [c.lower_bound for c in runs[0].classes]


def test_widening_decides_which_relus_count_as_stable():
    model = mlp([3, 4, 3, 3], seed=5)
    net = MILPNetwork.from_model(model, (1, 1, 3))
    x, eps = torch.tensor([[[0.3, 0.7, 0.5]]]), 0.25
    y = int(model(x.unsqueeze(0)).argmax())
    pre = ibp_preact(model, x, eps)
    base = verify_sample(net, model, x, y, eps, pre, early_stop=False)
    lo0, hi0 = pre[0][0][0], pre[0][1][0]
    i = int(torch.nonzero((lo0 < -1e-3) & (hi0 > 0))[0])  # an unstable neuron of the first layer

    def with_upper(value):  # claim that neuron i stays below `value`
        hi = pre[0][1].clone()
        hi[0, i] = value
        return verify_sample(net, model, x, y, eps, [(pre[0][0], hi), pre[1]], early_stop=False)

    inside, outside = with_upper(-0.5 * base.band), with_upper(-2.0 * base.band)
    assert inside.band == outside.band == base.band
    # Within the band an upper bound below 0 may be rounding error: the neuron stays unstable (a
    # binary). Beyond it, the neuron is fixed at 0.
    assert inside.counts[0] == base.counts[0]
    assert outside.counts[0][0] == base.counts[0][0] + 1 and outside.counts[0][2] == base.counts[0][2] - 1


# ------------------------------------------------------------------------------------ boxes, input
def test_float32_box_lies_inside_the_real_box_and_the_milp_box_contains_it():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(200, generator=gen), torch.tensor([0.0, 1.0, 1e-30, 1 - 2 ** -24, 0.1, 0.3])])
    for eps in (0.1, 2 / 255, 0.3, 1e-9, 0.0):
        lo32, hi32 = _inner_box32(x, eps)
        lo64, hi64 = _milp_box(x, eps)
        e = Fraction(eps)
        for i in range(x.numel()):
            v = Fraction(float(x[i]))
            real_lo, real_hi = max(v - e, Fraction(0)), min(v + e, Fraction(1))
            assert real_lo <= Fraction(float(lo32[i])) <= Fraction(float(hi32[i])) <= real_hi
            assert Fraction(float(lo64[i])) <= real_lo and real_hi <= Fraction(float(hi64[i]))
        assert lo32.dtype == torch.float32 and torch.all(hi32 - lo32 >= 0)


def test_bad_input_is_rejected_clearly():
    model = mlp([3, 4, 3, 3], seed=5)
    net = MILPNetwork.from_model(model, (1, 1, 3))
    x, eps = torch.tensor([[[0.3, 0.7, 0.5]]]), 0.25
    pre = ibp_preact(model, x, eps)
    with pytest.raises(ValueError, match="eval"):
        verify_sample(net, model.train(), x, 0, eps, pre)
    model.eval()
    with pytest.raises(ValueError, match="one .lower, upper. pair per ReLU layer"):
        verify_sample(net, model, x, 0, eps, pre[:1])
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        verify_sample(net, model, x, 0, eps, [(pre[0][0][:, :3], pre[0][1][:, :3]), pre[1]])
    with pytest.raises(ValueError, match="unsound"):
        verify_sample(net, model, x, 0, eps, [(pre[0][1] + 1, pre[0][1]), pre[1]])
    with pytest.raises(ValueError, match="finite"):
        verify_sample(net, model, x, 0, eps, [(pre[0][0] - math.inf, pre[0][1]), pre[1]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        verify_sample(net, model, x + 1, 0, eps, pre)
    with pytest.raises(ValueError, match="shape"):
        verify_sample(net, model, x.view(3), 0, eps, pre)
    with pytest.raises(ValueError, match="label"):
        verify_sample(net, model, x, 3, eps, pre)
    with pytest.raises(ValueError, match="eps"):
        verify_sample(net, model, x, 0, -0.1, pre)
    with pytest.raises(ValueError, match="node_limit"):
        verify_sample(net, model, x, 0, eps, pre, node_limit=-1)
    with pytest.raises(ValueError, match="margin_lower"):
        verify_sample(net, model, x, 0, eps, pre, margin_lower=torch.zeros(5))
    other = mlp([3, 4, 3, 3], seed=6)
    with pytest.raises(ValueError, match="rebuild"):
        verify_sample(net, other, x, 0, eps, pre)
    both = intersect_relu_bounds(pre, pre)
    assert verify_sample(net, model, x, 0, eps, both).verdict in ("verified", "counterexample", "unknown")
