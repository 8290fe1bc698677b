"""The verification API on small random networks: sat is a real counterexample, unsat survives sampling,
bad boxes are refused, and a band that cannot be cleared is said at once."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from harness.bounds.complete import verify_box
from harness.bounds.ibp import ibp_bounds
from harness.bounds.milp import MILPNetwork
from harness.bounds.tighten import flat_bounds, tightened_for_milp
from harness.models import Normalize
from harness.verification import Box, Verifier, VerifySettings


def _net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(Normalize([0.5], [0.25]), nn.Flatten(), nn.Linear(16, 20), nn.ReLU(), nn.Linear(20, 20),
                          nn.ReLU(), nn.Linear(20, 4))
    return model.eval()


def _violated(model, x: torch.Tensor, label: int) -> torch.Tensor:
    with torch.no_grad():
        z = model(x)
    others = torch.cat([z[:, :label], z[:, label + 1:]], 1)
    return others.max(1).values >= z[:, label]


@pytest.mark.slow
def test_verdicts_on_random_boxes_are_real_counterexamples_or_survive_sampling():
    statuses = []
    for seed in range(6):
        model = _net(seed)
        g = torch.Generator().manual_seed(seed)
        centre = torch.rand(1, 1, 4, 4, generator=g)
        label = int(model(centre).argmax())
        # a general box (not a ball): a different width per input, clipped to [0, 1]
        width = 0.2 * torch.rand(1, 1, 4, 4, generator=g)
        lo, hi = (centre - width).clamp(0, 1), (centre + width).clamp(0, 1)
        box = Box(lo.double().numpy(), hi.double().numpy(), (1, 4, 4))
        r = Verifier(model, (1, 4, 4), VerifySettings(time_limit_s=30, autoattack=False)).verify(box, label)
        statuses.append(r.status)
        if r.status == "sat":
            x = r.counterexample.view(1, 1, 4, 4)
            assert box.contains(x) and bool(_violated(model, x, label)[0])
        elif r.status == "unsat":
            samples = lo + (hi - lo) * torch.rand(20000, 1, 4, 4, generator=g)
            corners = torch.where(torch.rand(2000, 1, 4, 4, generator=g) < 0.5, lo, hi)
            assert not bool(_violated(model, torch.cat([samples, corners]), label).any())
            assert r.band < 1e-6  # float64 bounds: a tiny band
    assert "sat" in statuses and "unsat" in statuses, statuses  # both kinds exercised


def test_a_box_outside_the_unit_interval_or_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match=r"leaves \[0, 1\].*input 2"):
        Box(np.zeros(16), np.r_[np.ones(2), 1.5, np.ones(13)], (1, 4, 4))
    with pytest.raises(ValueError, match="15 inputs but the network takes 16"):
        Box(np.zeros(15), np.ones(15), (1, 4, 4))
    with pytest.raises(ValueError, match="empty at input 0"):
        Box(np.r_[0.6, np.zeros(15)], np.full(16, 0.5), (1, 4, 4))


def test_a_band_no_bound_can_clear_is_unknown_at_once_with_the_numbers():
    model = _net(0)
    net = MILPNetwork.from_model(model, (1, 4, 4))
    lo, hi = torch.full((1, 1, 4, 4), 0.2), torch.full((1, 1, 4, 4), 0.6)
    label = int(model((lo + hi) / 2).argmax())
    b = ibp_bounds(model.double(), lo.double(), hi.double())
    model.float()
    t = time.perf_counter()
    r = verify_box(net, model, lo.double().numpy().reshape(-1), hi.double().numpy().reshape(-1), label, b.preact,
                   band=1e3, margin_lower=torch.full((3,), -math.inf), box32=None, time_limit_s=60,
                   attack_margins={j: 0.5 for j in range(4) if j != label})
    assert time.perf_counter() - t < 5  # not the time limit
    assert r.verdict == "unknown" and "cannot clear the float band" in r.reason and "threshold 1e+03" in r.reason


def test_lirpa_bounds_over_an_explicit_box_equal_the_balls_and_hold_on_a_narrower_box():
    from harness.bounds import lirpa  # lazy, as everywhere: importing auto_LiRPA patches torch
    from harness.threat_model import input_box

    model = _net(1)
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    lo, hi = input_box(x, 0.05)
    ball = lirpa.lirpa_margin_bounds(model, x, y, 0.05, "crown")
    assert torch.equal(lirpa.lirpa_margin_bounds(model, x, y, 0.05, "crown", box=(lo, hi)), ball)
    narrow = lirpa.lirpa_margin_bounds(model, x, y, 0.0, "crown", box=(x - (x - lo) / 2, x + (hi - x) / 2))
    assert bool((narrow >= ball - 1e-6).all())  # a sub-box: bounds at least as tight
    relu = lirpa.lirpa_relu_bounds(model, x, y, 0.0, "crown", box=(lo, hi))
    assert all(bool((l <= u).all()) for l, u in relu)
    with pytest.raises(ValueError, match="inside the box"):
        lirpa.lirpa_margin_bounds(model, x, y, 0.0, "crown", box=(lo + 1, hi + 1))


def test_one_pass_gives_the_margin_and_relu_bounds_of_two():
    from harness.bounds import lirpa

    model = _net(2)
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    margins, relu = lirpa.lirpa_relu_bounds(model, x, y, 0.05, "crown", return_margins=True)
    assert torch.equal(margins, lirpa.lirpa_margin_bounds(model, x, y, 0.05, "crown"))
    for (l1, u1), (l2, u2) in zip(relu, lirpa.lirpa_relu_bounds(model, x, y, 0.05, "crown")):
        assert torch.equal(l1, l2) and torch.equal(u1, u2)


def test_lp_stage_tightens_deep_relu_bounds_and_keeps_every_reachable_value():
    """The LP stage: never looser than the bounds it gets, strictly tighter somewhere on a 3-layer net, and
    every pre-activation of points sampled in the box (corners included) inside what it returns."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                          nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 4)).eval()
    v = Verifier(model, (1, 4, 4))
    g = torch.Generator().manual_seed(0)
    centre = torch.rand(1, 1, 4, 4, generator=g)
    lo, hi = (centre - 0.15).clamp(0, 1).double(), (centre + 0.15).clamp(0, 1).double()
    with torch.no_grad():
        ibp = ibp_bounds(v.model64, lo, hi).preact
    band = 1e-9
    tightened, line = tightened_for_milp(v.net, lo.numpy().reshape(-1), hi.numpy().reshape(-1), flat_bounds(ibp),
                                         band, time_limit_s=60.0)
    assert "LP-tightened bounds" in line
    gained = 0.0
    for (l0, u0), (l1, u1) in zip(ibp, tightened):
        l0, u0 = l0.reshape(-1), u0.reshape(-1)
        l1, u1 = l1.reshape(-1), u1.reshape(-1)
        assert bool((l1 >= l0 - band).all() and (u1 <= u0 + band).all())
        gained += float((u0 - l0).sum() - (u1 - l1).sum())
    assert gained > 1.0
    x = torch.cat([lo + (hi - lo) * torch.rand(20000, 1, 4, 4, generator=g, dtype=torch.float64),
                   torch.where(torch.rand(2000, 1, 4, 4, generator=g) < 0.5, lo, hi)])
    h = x.reshape(len(x), -1)
    k = 0
    with torch.no_grad():
        for layer in v.model64[1:]:
            h = layer(h)
            if isinstance(layer, nn.Linear) and k < len(tightened):
                l1, u1 = (t.reshape(-1) for t in tightened[k])
                assert bool((h >= l1 - 1e-12).all() and (h <= u1 + 1e-12).all()), k
                k += 1
    assert k == 3
