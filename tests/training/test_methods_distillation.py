"""CC-DIST: the hand-computed loss on a tiny net, its alpha = 1 limit (IBP's loss plus the feature
term), the frozen teacher at the clean input, and gradients into the student."""

import copy

import pytest
import torch
from tiny_nets import X_TINY, Y_TINY, softplus, tiny_net  # tests/training/tiny_nets.py
from torch import nn

from harness.bounds.ibp import ibp_bounds
from harness.models import build_model, frozen_batch_stats, split_head
from harness.threat_model import input_box
from harness.training.methods import Batch, make_method, worst_case_feature_distance

SHAPE = ((1, 28, 28), 10, [0.13], [0.31])
EPS = 0.05


def tiny_teacher() -> nn.Sequential:
    """Features h_T(x) = x + 5 (identity first layer): (5.5, 5.5) at the clean x, (5.6, 5.6) at x_adv."""
    net = tiny_net()
    with torch.no_grad():
        net[2].weight.copy_(torch.eye(2))
    return net.eval().requires_grad_(False)


def _loss(method, student, teacher, x, y, eps, eps_final, seed=7):
    torch.manual_seed(seed)
    with frozen_batch_stats(student):
        return method(Batch(student, x, y, eps, eps_final, teacher))


@pytest.mark.parametrize("alpha, want", [
    # alpha = 0.5: x_adv = (0.6, 0.6) (one PGD step of 2.5 eps lands on the corner where -x1 - 2 x2 is
    # lowest), h_S(x_adv) = (5.0, 6.8), m_adv = -1.8; IBP over [0.4, 0.6]^2: h_0 in [4.8, 5.2], h_1 in
    # [6.2, 6.8], m_IBP = -2.0. CE part: softplus of -(0.5 * 2.0 + 0.5 * 1.8). h_cc = [4.9, 5.1] x [6.5, 6.8];
    # against h_T(x) = (5.5, 5.5): max(0.36, 0.16) + max(1.0, 1.69) = 2.05, times 5 / d = 5 / 2.
    (0.5, softplus(-1.9) + 2.5 * 2.05),
    # alpha = 1: IBP's CE plus the feature term of the IBP box alone: max(0.49, 0.09) + max(0.49, 1.69) = 2.18
    (1.0, softplus(-2.0) + 2.5 * 2.18),
    # alpha = 0: CE at x_adv plus the distance of h_S(x_adv) itself: 0.25 + 1.69 = 1.94
    (0.0, softplus(-1.8) + 2.5 * 1.94),
])
def test_cc_dist_by_hand_on_a_tiny_net(alpha, want):
    method = make_method("cc_dist", {"alpha": alpha, "regulariser": 0.0})
    out = _loss(method, tiny_net(), tiny_teacher(), X_TINY, Y_TINY, 0.1, 0.1)
    assert out.loss.item() == pytest.approx(want, rel=1e-5)


@pytest.fixture()
def setup():
    torch.manual_seed(1)
    student = build_model("cnn_small", *SHAPE).train()
    teacher = build_model("cnn_small", *SHAPE).eval().requires_grad_(False)
    return student, teacher, torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))


@pytest.mark.parametrize("eps", [EPS / 2, EPS])
def test_cc_dist_with_alpha_one_is_ibp_plus_the_feature_term(setup, eps):
    """alpha = 1: the IBP method's loss (robust CE and regulariser) plus (5 / d) mean_b sum_j of the
    largest squared distance of the features' IBP box from the teacher's clean features, by hand."""
    student, teacher, x, y = setup
    got = _loss(make_method("cc_dist", {"alpha": 1.0}), copy.deepcopy(student), teacher, x, y, eps, EPS)
    ibp = _loss(make_method("ibp"), copy.deepcopy(student), teacher, x, y, eps, EPS)
    s = copy.deepcopy(student)
    with frozen_batch_stats(s), torch.no_grad():
        s(x)
        lo, hi = input_box(x, eps)
        box = ibp_bounds(split_head(s)[0], lo, hi)
        h_t = split_head(teacher)[0](x)
        far = torch.maximum((box.lower - h_t).abs(), (box.upper - h_t).abs())
        feature = 5.0 / h_t.shape[1] * (far ** 2).sum(1).mean()
    assert got.loss.item() == pytest.approx(ibp.loss.item() + feature.item(), rel=1e-5)
    assert got.terms["loss_feat"].item() == pytest.approx(feature.item(), rel=1e-5)


def test_worst_case_feature_distance_is_the_largest_over_the_box():
    torch.manual_seed(0)
    lo = torch.randn(3, 6)
    hi = lo + torch.rand(3, 6)
    t = torch.randn(3, 6)
    grid = lo.unsqueeze(0) + (hi - lo).unsqueeze(0) * torch.linspace(0, 1, 101).view(-1, 1, 1)
    want = ((grid - t) ** 2).max(0).values.sum(1)
    assert torch.allclose(worst_case_feature_distance(lo, hi, t), want)


def test_cc_dist_teacher_is_frozen_at_the_clean_input_and_gradients_reach_the_student(setup):
    student, teacher, x, y = setup
    before = copy.deepcopy(teacher.state_dict())
    out = _loss(make_method("cc_dist", {"alpha": 0.5}), student, teacher, x, y, EPS / 2, EPS)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # running stats too
    assert not teacher.training
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_cc_dist_teacher_matters_and_is_required(setup):
    student, teacher, x, y = setup
    other = build_model("cnn_small", *SHAPE).eval()
    m = make_method("cc_dist", {"alpha": 0.3})
    assert _loss(m, copy.deepcopy(student), teacher, x, y, EPS, EPS).loss.item() != pytest.approx(
        _loss(m, copy.deepcopy(student), other, x, y, EPS, EPS).loss.item())
    with pytest.raises(ValueError, match="cc_dist needs a teacher"):
        _loss(m, student, None, x, y, EPS, EPS)
