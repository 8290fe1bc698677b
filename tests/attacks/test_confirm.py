"""The project's own check of an attack's points: exact threat-model membership and a forward pass."""

from fractions import Fraction

import torch

from harness.attacks import confirm_broken
from harness.models import build_model
from harness.threat_model import clip_to_threat_model, in_threat_model


def _exactly_inside(p: float, x: float, eps: float) -> bool:
    """Reference in rational arithmetic: |p - x| <= eps and 0 <= p <= 1 for the stored values."""
    return abs(Fraction(p) - Fraction(x)) <= Fraction(eps) and 0 <= Fraction(p) <= 1


def test_membership_is_exact_where_float32_arithmetic_is_not():
    # x = fl32(0.1), eps = 0.1: the real bound x + eps = 0.2000000015 lies between two float32 values.
    x = torch.tensor([[0.1]], dtype=torch.float32)
    above = torch.tensor([[0.2]], dtype=torch.float32)  # 0.2000000030 > x + eps: outside
    below = torch.nextafter(above, torch.zeros(1))      # 0.1999999881 <= x + eps: inside
    # float32 arithmetic calls both inside (their float32 difference rounds to fl32(0.1) <= eps).
    assert bool((above - x).abs().max() <= torch.tensor(0.1, dtype=torch.float32))
    assert not in_threat_model(above, x, 0.1).item()
    assert in_threat_model(below, x, 0.1).item()
    assert _exactly_inside(float(above), float(x), 0.1) is False and _exactly_inside(float(below), float(x), 0.1)


def test_membership_matches_rational_arithmetic_at_ties():
    # eps = |fl64(p - x)|: every pair is a tie in float64, settled only by the rounding error's sign.
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4000, 1, dtype=torch.float64, generator=g) ** 3  # varied exponents, so differences round
    p = torch.rand(4000, 1, dtype=torch.float64, generator=g)
    got, want = [], []
    for pi, xi in zip(p, x):
        eps = abs(float(pi) - float(xi))
        got.append(in_threat_model(pi[None], xi[None], eps).item())
        want.append(_exactly_inside(float(pi), float(xi), eps))
    assert got == want
    assert 0 < sum(want) < len(want)  # both outcomes occur, so the comparison means something


def test_membership_checks_every_coordinate_and_the_data_domain():
    x = torch.full((3, 1, 2, 2), 0.5)
    p = x.clone()
    p[0, 0, 1, 1] = 0.75          # on the boundary at eps 0.25 (exact in float32): inside
    p[1, 0, 0, 1] = 0.7500001     # one coordinate beyond it: outside
    p[2] = 1.0                    # inside the ball at eps 1 but ...
    assert in_threat_model(p, x, 0.25).tolist() == [True, False, False]
    assert in_threat_model(p, x, 1.0).tolist() == [True, True, True]
    p[2, 0, 0, 0] = 1.0000001     # ... not above 1
    assert in_threat_model(p, x, 1.0).tolist() == [True, True, False]
    p[0, 0, 0, 0] = float("nan")
    assert not in_threat_model(p, x, 1.0)[0]


def test_clipping_lands_inside_and_keeps_inside_points():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(64, 1, 8, 8, generator=g)
    x[:8] = 0.0
    x[8:16] = 1.0
    for eps in (0.1, 0.3, 1 / 255, 0.0):
        far = torch.rand(x.shape, generator=g) * 3 - 1
        clipped = clip_to_threat_model(far, x, eps)
        assert in_threat_model(clipped, x, eps).all()
        inside = clip_to_threat_model(x + (torch.rand(x.shape, generator=g) * 2 - 1) * eps * 0.99, x, eps)
        assert torch.equal(clip_to_threat_model(inside, x, eps), inside)
    # A point a rounding outside moves by one float32 step only.
    x = torch.tensor([[0.1]])
    assert clip_to_threat_model(torch.tensor([[0.2]]), x, 0.1).item() == torch.nextafter(
        torch.tensor(0.2), torch.tensor(0.0)).item()


def test_a_counterexample_needs_the_ball_and_a_misclassifying_forward_pass():
    torch.manual_seed(0)
    # BatchNorm makes the mode matter: in training mode the predictions would differ.
    model = build_model("cnn_small", (1, 8, 8), 10, [0.5], [0.25]).train()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(32, 1, 8, 8, generator=g)
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    model.train()
    y_right, y_wrong = pred, (pred + 1) % 10
    assert not confirm_broken(model, x, y_right, x, 0.1).any()   # correctly classified: not broken
    assert confirm_broken(model, x, y_wrong, x, 0.1).all()       # misclassified inside the ball: broken
    outside = (x + 0.2).clamp(max=1.0)
    moved = (outside - x).flatten(1).amax(1) > 0.1
    assert moved.any()
    assert torch.equal(confirm_broken(model, x, y_wrong, outside, 0.1), ~moved)  # outside the ball: never
    assert model.training  # the check runs in eval mode and restores the caller's mode
