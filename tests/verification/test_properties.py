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
            prop = LinearProperty(np.array([[0.0, 1.0, -1.0, 0.0], [0.0, 0.0, 0.0, -1.0]]),
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
        prop = LinearProperty(np.stack(rows), np.zeros(3))
        ours = PropertyVerifier(model, (1, 4, 4), prop, SETTINGS).verify(box)
        theirs = Verifier(model, (1, 4, 4), SETTINGS).verify(box, label)
        assert ours.status == theirs.status, (seed, ours.status, theirs.status)


def test_a_bound_that_is_not_a_float32_is_rounded_up_and_never_gives_a_false_counterexample():
    """y = x on the single point x = float32(0.1) (> 0.1): 'Y_0 <= 0.1' is not met there. The head's bound,
    rounded up to float32(0.1), is met by it; the exact check turns that into unknown, never sat."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 1)).eval()
    with torch.no_grad():
        model[1].weight.fill_(1.0)
        model[1].bias.zero_()
    x = float(np.float32(0.1))
    assert x > 0.1
    prop = LinearProperty(np.array([[1.0]]), np.array([0.1]))
    assert prop.b_up[0] == x and not prop.met_by([x]) and prop.met_by([0.1])
    r = PropertyVerifier(model, (1,), prop, SETTINGS).verify(Box(np.array([x]), np.array([x]), (1,)))
    assert r.status == "unknown" and "rounded up to float32" in r.reason and r.counterexample is None
    # one ulp of float32 lower down, the bound is met: sat
    below = float(np.nextafter(np.float32(0.1), np.float32(0)))
    r = PropertyVerifier(model, (1,), prop, SETTINGS).verify(Box(np.array([below]), np.array([x]), (1,)))
    assert r.status == "sat" and float(r.counterexample[0]) == below


def test_conjunctions_and_coefficients_that_are_not_float32_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="clause 2 .* conjunction of 2 constraints"):
        LinearProperty.from_clauses([(np.array([[1.0, 0.0]]), np.array([0.0])),
                                     (np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0.0, 1.0]))], 2)
    with pytest.raises(ValueError, match=r"coefficient 0\.1 of Y_1 is not a float32"):
        LinearProperty.from_clauses([(np.array([[1.0, 0.1]]), np.array([0.0]))], 2)
    prop = LinearProperty.from_clauses([(np.array([[1.0, -1.0]]), np.array([0.5]))], 2)
    assert prop.met_by([1.0, 0.5]) and not prop.met_by([1.0, 0.25])
