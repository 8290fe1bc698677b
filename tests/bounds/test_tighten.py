"""harness.bounds.tighten: LP-tightened ReLU bounds are sound (contain every reachable value), never looser
than the bounds given, and the dual bound behind them holds for any multipliers."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from harness.bounds import ibp_bounds
from harness.bounds.complete import verify_sample
from harness.bounds.milp import MILPNetwork
from harness.bounds.tighten import lp_tightened_bounds, safe_dual_bound, verify_with_lp_bounds
from harness.models import Normalize
from harness.threat_model import input_box, outward_box64


def test_the_dual_bound_holds_for_any_multipliers():
    # min x0 + x1 s.t. x0 + x1 >= 1 (row), 0 <= x <= 1: the optimum is 1
    A = sp.csc_matrix(np.array([[1.0, 1.0]]))
    cost, rl, ru = np.array([1.0, 1.0]), np.array([1.0]), np.array([np.inf])
    lo, hi = np.zeros(2), np.ones(2)
    rng = np.random.default_rng(0)
    for y in rng.normal(size=(50, 1)) * 3:
        assert safe_dual_bound(cost, A, rl, ru, lo, hi, y) <= 1.0
    assert abs(safe_dual_bound(cost, A, rl, ru, lo, hi, np.array([1.0])) - 1.0) < 1e-8  # the optimal dual


def _model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(Normalize((0.5,), (0.25,)), nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10),
                         nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def test_tightened_bounds_contain_every_sampled_activation_and_are_never_looser():
    model = _model(3)
    net = MILPNetwork.from_model(model, (1, 4, 4))
    x, eps = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(1)), 0.15
    lo, hi = input_box(x, eps)
    with torch.no_grad():
        pre = ibp_bounds(model, lo, hi).preact
    flat = [(l.double().reshape(-1).numpy() - 1e-6, u.double().reshape(-1).numpy() + 1e-6) for l, u in pre]
    l64, h64 = outward_box64(x[0], eps)
    tight, stats = lp_tightened_bounds(net, l64, h64, flat)
    assert stats["lps"] > 0 and stats["unstable_after"] <= stats["unstable_before"]
    gained = 0.0
    for (l0, u0), (l1, u1) in zip(flat, tight):
        assert (l1 >= l0).all() and (u1 <= u0).all()
        gained += float((l1 - l0).sum() + (u0 - u1).sum())
    assert gained > 0  # LP is tighter than IBP here
    # every pre-activation reached by points of the box (corners included) lies inside
    gen = torch.Generator().manual_seed(2)
    pts = lo + (hi - lo) * torch.rand((4000,) + tuple(x.shape[1:]), generator=gen)
    pts[:1000] = torch.where(torch.rand(pts[:1000].shape, generator=gen) < 0.5, lo, hi)
    acts, h = [], pts.double()
    m64 = model.double()
    with torch.no_grad():
        for layer in m64:
            if isinstance(layer, nn.ReLU):
                acts.append(h.reshape(len(h), -1).numpy())
            h = layer(h)
    for a, (l1, u1) in zip(acts, tight):
        assert (a >= l1 - 1e-9).all() and (a <= u1 + 1e-9).all()


def test_verification_on_tightened_bounds_gives_the_same_verdict():
    model = _model(5)
    net = MILPNetwork.from_model(model, (1, 4, 4))
    x = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(7))
    y = int(model(x.unsqueeze(0)).argmax())
    for eps in (0.02, 0.2):
        lo, hi = input_box(x.unsqueeze(0), eps)
        with torch.no_grad():
            pre = ibp_bounds(model, lo, hi).preact
        plain = verify_sample(net, model, x, y, eps, pre, early_stop=False)
        tight = verify_with_lp_bounds(net, model, x, y, eps, pre)
        assert plain.verdict == tight.verdict != "unknown"
        assert tight.reason.startswith("LP-tightened bounds")
