"""The own IBP (harness.bounds.ibp): agreement with auto_LiRPA, soundness, gradients, layer coverage."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.bounds import certify, margin_lower_bounds
from harness.bounds.ibp import IBPBounds, UnsupportedLayerError, flatten_layers, ibp_bounds
from harness.bounds.spec import spec_matrix
from harness.models import Normalize, build_model, clean_batch_stats, frozen_batch_stats
from harness.threat_model import input_box

MNIST = ((0.1307,), (0.3081,))
CIFAR = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
K = 10


def randomize_batchnorm(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters (some negative scales) in every BN."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
                sign = torch.where(torch.rand(n, generator=gen) < 0.2, -1.0, 1.0)
                m.weight.copy_(sign * (0.5 + torch.rand(n, generator=gen)))
                m.bias.copy_(0.6 * torch.rand(n, generator=gen) - 0.3)


def exotic(in_shape: tuple[int, int, int], trailing_bn: bool) -> nn.Sequential:
    """Every supported layer in unusual places: nested Sequential, BN after ReLU, AvgPool, maybe BN last."""
    c, h, _ = in_shape
    tail = [nn.BatchNorm1d(K)] if trailing_bn else []
    return nn.Sequential(
        Normalize(*MNIST) if c == 1 else Normalize(*CIFAR),
        nn.Sequential(nn.Conv2d(c, 6, 3, padding=1), nn.ReLU()),
        nn.BatchNorm2d(6), nn.AvgPool2d(2), nn.Conv2d(6, 8, 3, stride=2, bias=False), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * ((h // 2 - 3) // 2 + 1) ** 2, 6), nn.BatchNorm1d(6), nn.ReLU(),
        # batch >= 6: this BN folds into the weights, the one above into the outputs (both code paths)
        nn.Linear(6, 20), nn.BatchNorm1d(20), nn.ReLU(),
        nn.Linear(20, K), *tail,
    )


# (arch, input shape, seed, width)
CASES = [
    ("cnn_small", (1, 28, 28), 0, None),
    ("cnn_small", (1, 28, 28), 1, None),
    ("cnn_small", (3, 32, 32), 2, None),
    ("mlp", (1, 28, 28), 3, 32),
    ("cnn7", (1, 28, 28), 4, 8),
    ("exotic", (1, 28, 28), 5, None),
    ("exotic-bn", (1, 28, 28), 6, None),  # ends Linear + BN: own IBP folds both, auto_LiRPA neither
]
IDS = [f"{a}-{s[0]}x{s[1]}-seed{seed}" for a, s, seed, _ in CASES]


def make_model(arch: str, in_shape, seed: int, width=None, dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(seed)
    if arch.startswith("exotic"):
        model = exotic(in_shape, trailing_bn=arch == "exotic-bn")
    else:
        mean, std = MNIST if in_shape[0] == 1 else CIFAR
        model = build_model(arch, in_shape, K, mean, std, width=width)
    randomize_batchnorm(model, torch.Generator().manual_seed(seed))
    return model.eval().to(dtype)


def make_batch(model: nn.Module, in_shape, n: int, seed: int, dtype=torch.float64):
    """Random inputs; labels = the prediction for half the batch, random for the rest (mixed verdicts)."""
    gen = torch.Generator().manual_seed(1000 + seed)
    x = torch.rand(n, *in_shape, generator=gen, dtype=torch.float64).to(dtype)
    with torch.no_grad():
        pred = model(x.to(next(model.parameters()).dtype)).argmax(1)
    y = torch.where(torch.arange(n) % 2 == 0, pred, torch.randint(0, K, (n,), generator=gen))
    return x, y


def margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact margins z_y - z_j, in the order of spec_matrix."""
    z = model(x)
    return torch.bmm(spec_matrix(y, z.shape[1], z.dtype), z.unsqueeze(-1)).squeeze(-1)


def box_bounds(model, x, y, eps, C=True) -> IBPBounds:
    lo, hi = input_box(x, eps)
    return ibp_bounds(model, lo, hi, spec_matrix(y, K, x.dtype) if C else None)


def scale_of(t: torch.Tensor) -> float:
    return float(t.detach().abs().max())


# --------------------------------------------------------------------------------- auto_LiRPA
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("arch,in_shape,seed,width", CASES[:-1], ids=IDS[:-1])
def test_matches_auto_lirpa_ibp(arch, in_shape, seed, width, dtype):
    lirpa = pytest.importorskip("harness.bounds.lirpa")
    model = make_model(arch, in_shape, seed, width, dtype)
    x, y = make_batch(model, in_shape, 6, seed, dtype)
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    for eps in (0.0, 0.002, 0.02):
        ours = margin_lower_bounds(model, x, y, eps, "ibp")
        ref = lirpa.lirpa_margin_bounds(model, x, y, eps, "lirpa-ibp")
        assert ours.shape == ref.shape == (x.shape[0], K - 1)
        scale = scale_of(ref)
        assert torch.allclose(ours, ref.to(ours.dtype), rtol=rtol, atol=rtol * scale), \
            f"eps={eps}: max abs diff {float((ours - ref).abs().max().detach()):.3g} on bounds of size {scale:.3g}"
        ours_v = certify(model, x, y, eps, "ibp")
        ref_v = certify(model, x, y, eps, "lirpa-ibp")
        assert torch.equal(ours_v.certified, ref_v.certified)


def test_trailing_batchnorm_folded_tighter_than_auto_lirpa():
    """auto_LiRPA folds C only into a final Linear node; the own IBP folds a trailing BN into it first."""
    lirpa = pytest.importorskip("harness.bounds.lirpa")
    model = make_model("exotic-bn", (1, 28, 28), 6)
    x, y = make_batch(model, (1, 28, 28), 6, 6)
    ours = margin_lower_bounds(model, x, y, 0.002, "ibp").detach()
    ref = lirpa.lirpa_margin_bounds(model, x, y, 0.002, "lirpa-ibp")
    assert (ours >= ref - 1e-10).all() and (ours > ref + 1e-3).any()


# ---------------------------------------------------------------------------------- soundness
def pgd_iterates(model, x, y, eps, steps=10, seed=0):
    """Every iterate of a PGD that minimises the smallest margin (all lie inside the box)."""
    lo, hi = input_box(x, eps)
    gen = torch.Generator().manual_seed(seed)
    xa = lo + (hi - lo) * torch.rand(x.shape, generator=gen, dtype=x.dtype)
    points = []
    for _ in range(steps):
        xa = xa.detach().requires_grad_(True)
        loss = margins(model, xa, y).amin(1).sum()
        (grad,) = torch.autograd.grad(loss, xa)
        xa = torch.minimum(torch.maximum(xa - eps / 4 * grad.sign(), lo), hi).detach()
        points.append(xa)
    return points


def relu_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].detach()))
             for m in flatten_layers(model) if type(m) is nn.ReLU]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("eps", [0.001, 0.03])
@pytest.mark.parametrize("arch,in_shape,seed,width", CASES[2:], ids=IDS[2:])
def test_sound_in_float64(arch, in_shape, seed, width, eps):
    model = make_model(arch, in_shape, seed, width)
    x, y = make_batch(model, in_shape, 4, seed)
    bounds = box_bounds(model, x, y, eps)
    logit_bounds = box_bounds(model, x, y, eps, C=False)
    lo, hi = input_box(x, eps)
    gen = torch.Generator().manual_seed(seed)
    points = [lo + (hi - lo) * torch.rand(x.shape, generator=gen, dtype=x.dtype) for _ in range(30)]
    points += [torch.where(torch.rand(x.shape, generator=gen) < 0.5, lo, hi) for _ in range(30)]  # corners
    points += pgd_iterates(model, x, y, eps, seed=seed)
    tol = 1e-9 * (1 + scale_of(bounds.lower) + scale_of(bounds.upper))
    n = len(points)
    p = torch.cat(points)  # one forward for every point (float64 convolutions are slow on the CPU)
    rep = lambda t: t.repeat(n, *([1] * (t.dim() - 1)))  # noqa: E731 - rows line up with p
    with torch.no_grad():
        m = margins(model, p, y.repeat(n))
        z = model(p)
    assert (m >= rep(bounds.lower) - tol).all() and (m <= rep(bounds.upper) + tol).all()
    assert (z >= rep(logit_bounds.lower) - tol).all() and (z <= rep(logit_bounds.upper) + tol).all()
    acts = relu_inputs(model, p)
    assert len(acts) == len(bounds.preact) > 0
    for a, (pl, pu) in zip(acts, bounds.preact):
        assert a.shape[1:] == pl.shape[1:] == pu.shape[1:]
        assert (a >= rep(pl) - tol).all() and (a <= rep(pu) + tol).all()


@pytest.mark.parametrize("arch,in_shape,seed,width", CASES[2:], ids=IDS[2:])
def test_spec_folding_is_at_least_as_tight_as_subtracting(arch, in_shape, seed, width):
    model = make_model(arch, in_shape, seed, width)
    x, y = make_batch(model, in_shape, 4, seed)
    folded = box_bounds(model, x, y, 0.01)
    logits = box_bounds(model, x, y, 0.01, C=False)
    C = spec_matrix(y, K, x.dtype)
    # Interval arithmetic on the logit box: lower of C z = C+ l - C- u.
    naive = (torch.bmm(C.clamp(min=0), logits.lower.unsqueeze(-1))
             + torch.bmm(C.clamp(max=0), logits.upper.unsqueeze(-1))).squeeze(-1)
    assert (folded.lower >= naive - 1e-9).all()
    assert (folded.lower > naive + 1e-6).any(), "folding should be strictly tighter somewhere"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_no_grad_fast_path_equals_autograd_path(dtype):
    """Under no_grad ibp_bounds updates its own tensors in place; the results must not change."""
    for arch, seed, width in (("cnn7", 4, 8), ("exotic-bn", 6, None), ("mlp", 3, 16)):
        model = make_model(arch, (1, 28, 28), seed, width, dtype)
        x, y = make_batch(model, (1, 28, 28), 7, seed, dtype)
        with_grad = box_bounds(model, x, y, 0.01)
        with torch.no_grad():
            fast = box_bounds(model, x, y, 0.01)
        pairs = [(with_grad.lower, fast.lower), (with_grad.upper, fast.upper)]
        pairs += [(a, b) for pa, pb in zip(with_grad.preact, fast.preact) for a, b in zip(pa, pb)]
        assert len(fast.preact) == len(with_grad.preact)
        for a, b in pairs:
            assert torch.allclose(a.detach(), b, rtol=1e-6, atol=1e-6 * scale_of(a)), arch


def test_eps_zero_gives_exact_margins_and_verdicts():
    for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        model = make_model("cnn_small", (1, 28, 28), 0, dtype=dtype)
        x, y = make_batch(model, (1, 28, 28), 16, 0, dtype)
        exact = margins(model, x, y).detach()
        b = box_bounds(model, x, y, 0.0)
        assert torch.allclose(b.lower, exact, rtol=rtol, atol=rtol * scale_of(exact))
        assert torch.allclose(b.upper, exact, rtol=rtol, atol=rtol * scale_of(exact))
        v = certify(model, x, y, 0.0, "ibp")
        correct = model(x).argmax(1) == y
        assert torch.equal(v.certified, correct) and 0 < int(correct.sum()) < len(y)


def test_logit_bounds_without_spec_and_nonfolded_end():
    """C=None bounds the logits; a network that does not end in a Linear still gets C applied."""
    model = make_model("cnn_small", (1, 28, 28), 0)
    x, y = make_batch(model, (1, 28, 28), 3, 0)
    b = box_bounds(model, x, y, 0.0, C=False)
    assert b.lower.shape == (3, K) and torch.allclose(b.lower, model(x).detach(), atol=1e-10)
    ends_in_relu = nn.Sequential(*flatten_layers(model), nn.ReLU()).eval()
    bb = box_bounds(ends_in_relu, x, y, 0.01)
    assert bb.lower.shape == (3, K - 1) and len(bb.preact) == 4
    for p in pgd_iterates(ends_in_relu, x, y, 0.01, steps=5):
        assert (margins(ends_in_relu, p, y).detach() >= bb.lower - 1e-9).all()


def test_train_mode_uses_frozen_clean_statistics():
    """Training mode under frozen_batch_stats = eval mode with the clean batch's statistics as running ones."""
    model = make_model("cnn7", (1, 28, 28), 4, 8).train()
    x, y = make_batch(model.eval(), (1, 28, 28), 8, 4)
    model.train()
    with frozen_batch_stats(model):
        with torch.no_grad():
            model(x)
        stats = [clean_batch_stats(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]
        train_bounds = box_bounds(model, x, y, 0.01)
    for m, (mean, var) in zip([m for m in model.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)], stats):
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
    eval_bounds = box_bounds(model.eval(), x, y, 0.01)
    assert torch.allclose(train_bounds.lower, eval_bounds.lower, rtol=1e-10, atol=1e-10)
    with pytest.raises(RuntimeError, match="frozen_batch_stats"):
        box_bounds(model.train(), x, y, 0.01)  # no clean pass: refusing beats computing own statistics


# ---------------------------------------------------------------------------------- gradients
def ibp_loss(b: IBPBounds) -> torch.Tensor:
    """L_IBP = CE([0, -lower margins], class 0) (upper bounds of z_j - z_y as the wrong logits)."""
    worst = torch.cat([b.lower.new_zeros(b.lower.shape[0], 1), -b.lower], dim=1)
    return F.cross_entropy(worst, torch.zeros(b.lower.shape[0], dtype=torch.long))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("arch,width", [("cnn7", 8), ("cnn_small", None), ("exotic", None)])
def test_gradients_reach_every_parameter(arch, width, mode):
    model = make_model(arch, (1, 28, 28), 7, width, torch.float32)
    x, y = make_batch(model, (1, 28, 28), 8, 7, torch.float32)
    model.train(mode == "train")
    with frozen_batch_stats(model):
        with torch.no_grad():  # statistics are constants for the bound pass, as in training
            model(x)
        b = box_bounds(model, x, y, 0.005)
        ibp_loss(b).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


class _BoundsOf(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, lo, hi, C):
        b = ibp_bounds(self.net, lo, hi, C)
        return b.lower, b.upper, b.preact[-1][0]


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_gradcheck_tiny_float64(kind):
    torch.manual_seed(3)
    if kind == "mlp":
        # batch 8: the first BN folds into the outputs (72 weights > 48 outputs), the second into the weights
        net = nn.Sequential(Normalize((0.5,), (0.25,)), nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6),
                            nn.ReLU(), nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 4))
    else:
        net = nn.Sequential(Normalize((0.5,), (0.25,)), nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                            nn.AvgPool2d(2), nn.Flatten(), nn.BatchNorm1d(6), nn.Linear(6, 4))
    randomize_batchnorm(net, torch.Generator().manual_seed(3))
    net = net.double().eval()
    x = torch.rand(8, 1, 3, 4, dtype=torch.float64) if kind == "mlp" else torch.rand(3, 1, 4, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 3, 1, 1, 0, 3, 2])[:len(x)]
    lo, hi = input_box(x, 0.05)
    C = spec_matrix(y, 4, torch.float64)
    pre = ibp_bounds(net, lo, hi, C).preact
    assert min(float(t.detach().abs().min()) for pair in pre for t in pair) > 1e-4, "too close to a ReLU kink"
    wrapper = _BoundsOf(net)
    names = [n for n, _ in wrapper.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in wrapper.named_parameters()]

    def fn(lo_, hi_, *ps):
        return torch.func.functional_call(wrapper, dict(zip(names, ps)), (lo_, hi_, C))

    assert torch.autograd.gradcheck(fn, (lo.requires_grad_(True), hi.requires_grad_(True), *params))


# ----------------------------------------------------------------------------------- coverage
@pytest.mark.parametrize("bad", [nn.Tanh(), nn.MaxPool2d(2), nn.Dropout(), nn.Conv2d(8, 8, 3, padding_mode="reflect")])
def test_unsupported_layer_is_named(bad):
    model = nn.Sequential(Normalize(*MNIST), nn.Conv2d(1, 8, 3), nn.Sequential(nn.ReLU(), bad), nn.Flatten(),
                          nn.LazyLinear(K)).eval()
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(UnsupportedLayerError, match=type(bad).__name__) as info:
        ibp_bounds(model, x, x)
    assert isinstance(info.value, TypeError)
    assert all(name in str(info.value) for name in ("Conv2d", "Linear", "BatchNorm2d", "AvgPool2d"))
    with pytest.raises(UnsupportedLayerError):
        certify(model, x, torch.zeros(2, dtype=torch.long), 0.1)


def test_subclass_is_not_taken_for_its_parent():
    class Leaky(nn.ReLU):
        def forward(self, x):
            return F.leaky_relu(x, 0.1)

    with pytest.raises(UnsupportedLayerError, match="Leaky"):
        ibp_bounds(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), Leaky(), nn.Linear(3, 2)),
                   torch.zeros(1, 4), torch.ones(1, 4))


def test_shape_checks():
    model = make_model("mlp", (1, 28, 28), 0, 16)
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    with pytest.raises(ValueError, match="same shape"):
        ibp_bounds(model, x, x[:1])
    with pytest.raises(ValueError, match="C must have shape"):
        ibp_bounds(model, x, x, spec_matrix(torch.tensor([1]), K, torch.float64))
