"""Linear output properties (a disjunction of c . y <= b) through the verification API: verdicts that sampling
and exact arithmetic confirm, the classification form giving the label's verdicts, and a bound that is not a
float32 number never turning into a false "sat"."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from harness.models import Normalize
from harness.verification import (
    Box,
    LinearProperty,
    PropertyVerifier,
    Verifier,
    VerifySettings,
)

SETTINGS = VerifySettings(time_limit_s=30, autoattack=False)


def _net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(Normalize([0.5], [0.25]), nn.Flatten(), nn.Linear(16, 20), nn.ReLU(), nn.Linear(20, 20),
                         nn.ReLU(), nn.Linear(20, 4)).eval()


def _box(seed: int, half_width: float) -> tuple[torch.Tensor, torch.Tensor, Box]:
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(1, 1, 4, 4, generator=g)
    lo, hi = (centre - half_width).clamp(0, 1), (centre + half_width).clamp(0, 1)
    return lo, hi, Box(lo.double().numpy(), hi.double().numpy(), (1, 4, 4))


def _disjunction(C: np.ndarray, b: np.ndarray) -> LinearProperty:
    """'some row C[i] . y <= b[i]': one single-row clause per row."""
    return LinearProperty.from_clauses([(C[i:i + 1], b[i:i + 1]) for i in range(len(b))], C.shape[1])


def _met(prop: LinearProperty, y: torch.Tensor) -> torch.Tensor:
    """Per row of y (float64 here; the exact check is the module's): some constraint met."""
    C, b = torch.from_numpy(prop.C), torch.from_numpy(prop.b)
    return ((y.double() @ C.T) <= b).any(1)


@pytest.mark.slow
def test_a_disjunction_of_linear_constraints_is_decided_soundly_by_every_stage():
    """'Y_1 - Y_2 <= t or Y_3 >= t3' over random boxes, t swept: sat points meet the property exactly in
    the box, unsat ones survive 20,000 samples and the box's corners; both verdicts, and the MILP, occur."""
    seen = set()
    for seed in range(3):
        model = _net(seed)
        lo, hi, box = _box(seed, 0.15)
        g = torch.Generator().manual_seed(100 + seed)
        samples = torch.cat([lo + (hi - lo) * torch.rand(20000, 1, 4, 4, generator=g),
                             torch.where(torch.rand(2000, 1, 4, 4, generator=g) < 0.5, lo, hi)])
        with torch.no_grad():
            ys = model(samples)
        d = ys[:, 1] - ys[:, 2]
        for offset in (-0.3, -0.05, -0.02, 0.0):
            prop = _disjunction(np.array([[0.0, 1.0, -1.0, 0.0], [0.0, 0.0, 0.0, -1.0]]),
                                np.array([float(d.min()) + offset, -(float(ys[:, 3].max()) + 1.0)]))
            r = PropertyVerifier(model, (1, 4, 4), prop, SETTINGS).verify(box)
            seen.add((r.status, r.stage))
            if r.status == "sat":
                x = r.counterexample.view(1, 1, 4, 4)
                assert box.contains(x)
                assert prop.met_by(r.output.double().numpy())
                assert torch.equal(r.output, model(x)[0].detach())  # the network's outputs, not the head's
            else:
                assert r.status == "unsat", (r.status, r.reason)
                assert not bool(_met(prop, ys).any())
    statuses = {s for s, _ in seen}
    assert statuses == {"sat", "unsat"} and ("unsat", "milp") in seen, seen


@pytest.mark.slow
def test_the_classification_form_as_linear_constraints_gives_the_labels_verdicts():
    """'Y_j >= Y_label for some j' written as rows (e_label - e_j) . y <= 0: the verdict of Verifier(label)."""
    for seed in range(4):
        model = _net(seed)
        _, _, box = _box(seed, 0.12)
        label = int(model(torch.from_numpy((box.lo + box.hi) / 2).float().view(1, 1, 4, 4)).argmax())
        rows = [np.eye(4)[label] - np.eye(4)[j] for j in range(4) if j != label]
        prop = _disjunction(np.stack(rows), np.zeros(3))
        ours = PropertyVerifier(model, (1, 4, 4), prop, SETTINGS).verify(box)
        theirs = Verifier(model, (1, 4, 4), SETTINGS).verify(box, label)
        assert ours.status == theirs.status, (seed, ours.status, theirs.status)


def test_a_bound_that_is_not_a_float32_is_rounded_up_and_never_gives_a_false_counterexample():
    """y = x on the single point x = float32(0.1) (> 0.1): 'Y_0 <= 0.1' is not met there. The head's bound,
    rounded up to float32(0.1), is met by it; the exact check rejects it (no proof can exist either, the bound
    being reached: "cannot clear the float band"), so the verdict is unknown, never sat."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 1)).eval()
    with torch.no_grad():
        model[1].weight.fill_(1.0)
        model[1].bias.zero_()
    x = float(np.float32(0.1))
    assert x > 0.1
    prop = _disjunction(np.array([[1.0]]), np.array([0.1]))
    assert prop.b_up[0] == x and not prop.met_by([x]) and prop.met_by([0.1])
    r = PropertyVerifier(model, (1,), prop, SETTINGS).verify(Box(np.array([x]), np.array([x]), (1,)))
    assert r.status == "unknown" and "cannot clear the float band" in r.reason and r.counterexample is None
    # one ulp of float32 lower down, the bound is met: sat
    below = float(np.nextafter(np.float32(0.1), np.float32(0)))
    r = PropertyVerifier(model, (1,), prop, SETTINGS).verify(Box(np.array([below]), np.array([x]), (1,)))
    assert r.status == "sat" and float(r.counterexample[0]) == below


@pytest.mark.slow
def test_conjunctions_are_decided_through_the_minimum_layers_and_agree_with_sampling():
    """Clauses of 1 to 5 rows ('Y_0 is the smallest output', a band on Y_1 - Y_2, a single row): the head's
    outputs equal the clause minima, sat points meet a whole clause exactly, unsat survives sampling."""
    model = _net(4)
    lo, hi, box = _box(4, 0.15)
    g = torch.Generator().manual_seed(7)
    samples = torch.cat([lo + (hi - lo) * torch.rand(20000, 1, 4, 4, generator=g),
                         torch.where(torch.rand(2000, 1, 4, 4, generator=g) < 0.5, lo, hi)])
    with torch.no_grad():
        ys = model(samples).double()
    e = np.eye(4)
    smallest = (np.stack([e[0] - e[j] for j in (1, 2, 3)]), np.zeros(3))  # Y_0 <= Y_j for every j
    d = ys[:, 1] - ys[:, 2]
    verdicts = []
    for lo_d, hi_d in ((float(d.max()) + 0.5, float(d.max()) + 1.0), (float(d.min()), float(d.max()))):
        band = (np.stack([e[1] - e[2], e[2] - e[1], e[3], -e[3], e[0] - e[3]]),
                np.array([hi_d, -lo_d, 100.0, 100.0, 50.0]))  # lo_d <= Y_1 - Y_2 <= hi_d, and loose rows
        prop = LinearProperty.from_clauses([smallest, band, (np.array([e[1]]), np.array([-100.0]))], 4)
        head = PropertyVerifier(model, (1, 4, 4), prop, SETTINGS)
        with torch.no_grad():
            w = head.inner.model64(samples[:50].double())
        C, b = torch.from_numpy(prop.C), torch.from_numpy(prop.b_up)
        rows = b - ys[:50] @ C.T
        minima = torch.stack([rows[:, list(grp)].amin(1) for grp in prop.clauses], 1)
        assert torch.allclose(w[:, 1:], minima, atol=1e-9) and bool((w[:, 0] == 0).all())
        r = head.verify(box)
        verdicts.append(r.status)
        met = torch.stack([((ys @ torch.from_numpy(prop.C[list(grp)]).T) <= torch.from_numpy(prop.b[list(grp)]))
                           .all(1) for grp in prop.clauses], 1).any(1)
        if r.status == "sat":
            assert box.contains(r.counterexample.view(1, 1, 4, 4)) and prop.met_by(r.output.double().numpy())
        else:
            assert r.status == "unsat", (r.status, r.reason)
            assert not bool(met.any())
    # Y_0 never the smallest on this box (checked by sampling below) and a band out of reach: unsat; the
    # band that sampled points fill: sat
    assert verdicts == ["unsat", "sat"], verdicts


def test_coefficients_that_are_not_float32_and_malformed_clauses_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="clause 2 of the output property: expected rows over 2 outputs"):
        LinearProperty.from_clauses([(np.array([[1.0, 0.0]]), np.array([0.0])),
                                     (np.array([[1.0, 0.0, 0.0]]), np.array([0.0]))], 2)
    with pytest.raises(ValueError, match=r"coefficient 0\.1 of Y_1 is not a float32"):
        LinearProperty.from_clauses([(np.array([[1.0, 0.1]]), np.array([0.0]))], 2)
    prop = LinearProperty.from_clauses([(np.array([[1.0, -1.0]]), np.array([0.5]))], 2)
    assert prop.met_by([1.0, 0.5]) and not prop.met_by([1.0, 0.25])
