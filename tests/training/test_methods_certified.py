"""SABR and CROWN-IBP: hand-computed losses on a tiny net, the limits where they are IBP, soundness
and gradients of the CROWN-IBP training bound."""

import copy

import pytest
import torch
from tiny_nets import X_TINY, Y_TINY, softplus, tiny_net  # tests/training/tiny_nets.py

from harness.bounds.spec import spec_matrix
from harness.models import build_model, frozen_batch_stats
from harness.threat_model import input_box
from harness.training.methods import Batch, make_method, small_box

SHAPE = ((1, 28, 28), 10, [0.13], [0.31])
EPS = 0.05


def _loss(method, model, x, y, eps, eps_final, teacher=None, seed=7):
    torch.manual_seed(seed)
    with frozen_batch_stats(model):
        return method(Batch(model, x, y, eps, eps_final, teacher))


@pytest.fixture()
def cnn():
    torch.manual_seed(1)
    model = build_model("cnn_small", *SHAPE).train()
    return model, torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))


# ---- SABR -----------------------------------------------------------------------------------------------

def test_small_box_by_hand():
    x = torch.tensor([0.0, 0.5, 1.0])
    center = torch.tensor([0.2, 0.3, 0.95])
    # threat box [0, 0.2], [0.3, 0.7], [0.8, 1.0]; tau = 0.05: the center is clamped to [lo + tau, hi - tau]
    lo, hi = small_box(x, center, 0.2, 0.25)
    assert lo.tolist() == pytest.approx([0.1, 0.3, 0.9]) and hi.tolist() == pytest.approx([0.2, 0.4, 1.0])
    # tau = 0.12: the clipped pixels (width 0.2 < 0.24) take their whole threat box
    lo, hi = small_box(x, center, 0.2, 0.6)
    assert lo.tolist() == pytest.approx([0.0, 0.3, 0.8]) and hi.tolist() == pytest.approx([0.2, 0.54, 1.0])


def test_small_box_stays_inside_the_threat_model():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8).round()  # many pixels at 0 and 1: clipped threat boxes
    x[::2] = torch.rand(32, 1, 8, 8)
    for ratio in (0.05, 0.4, 0.7, 0.99, 1.0):
        center = (x + 0.3 * (2 * torch.rand_like(x) - 1)).clamp(0, 1)
        lo, hi = small_box(x, center, 0.1, ratio)
        t_lo, t_hi = input_box(x, 0.1)
        assert (lo >= t_lo).all() and (hi <= t_hi).all() and (lo <= hi).all()
        width = torch.minimum(torch.full_like(x, 2 * ratio * 0.1), t_hi - t_lo)
        assert torch.allclose(hi - lo, width, atol=1e-6)


def test_sabr_by_hand_on_a_tiny_net():
    """PGD raises both pixels to the ball's edge (the margin -x1 - 2 x2 falls in both), x_adv = (0.6, 0.6);
    lambda = 0.25: tau = 0.025, the center is clamped to 0.575, the small box is [0.55, 0.6]^2. IBP there:
    h_0 = x1 - x2 + 5 in [4.95, 5.05], h_1 = 2 x1 + x2 + 5 in [6.65, 6.8], margin bound 4.95 - 6.8 = -1.85."""
    method = make_method("sabr", {"box_ratio": 0.25, "regulariser": 0.0})
    out = _loss(method, tiny_net(), X_TINY, Y_TINY, 0.1, 0.1)
    assert out.loss.item() == pytest.approx(softplus(-1.85), rel=1e-5)
    # with w = 0.4: 0.6 CE(f(x), y) + 0.4 L; z(x) = (5, 6.5), CE = log(1 + e^1.5)
    method = make_method("sabr", {"box_ratio": 0.25, "regulariser": 0.0, "robust_weight": 0.4})
    out = _loss(method, tiny_net(), X_TINY, Y_TINY, 0.1, 0.1)
    assert out.loss.item() == pytest.approx(0.6 * softplus(-1.5) + 0.4 * softplus(-1.85), rel=1e-5)


@pytest.mark.parametrize("eps, w", [(EPS, 1.0), (EPS / 2, 0.7)])
def test_sabr_with_lambda_one_is_ibp(cnn, eps, w):
    """lambda = 1: the propagated box is B(x, eps) itself, so the loss (regulariser included) is IBP's."""
    model, x, y = cnn
    sabr = _loss(make_method("sabr", {"box_ratio": 1.0, "robust_weight": w}), copy.deepcopy(model), x, y, eps, EPS)
    ibp = _loss(make_method("ibp", {"robust_weight": w}), copy.deepcopy(model), x, y, eps, EPS)
    assert sabr.loss.item() == ibp.loss.item()
    assert sabr.terms["reg"].item() == ibp.terms["reg"].item()
    assert (sabr.terms["reg"].item() > 0) == (eps < EPS)  # the regulariser fades out at the end of the ramp


def test_sabr_small_box_loss_is_below_ibp_and_gradients_reach_the_model(cnn):
    model, x, y = cnn
    sabr = _loss(make_method("sabr", {"box_ratio": 0.4, "regulariser": 0.0}), model, x, y, EPS, EPS)
    ibp = _loss(make_method("ibp", {"regulariser": 0.0}), copy.deepcopy(model), x, y, EPS, EPS)
    assert sabr.loss.item() < ibp.loss.item()  # a subset of the ball: tighter bounds, smaller loss
    sabr.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# ---- CROWN-IBP ------------------------------------------------------------------------------------------

def test_crown_ibp_by_hand_on_a_tiny_net():
    """Both ReLUs are stable, so CROWN-IBP is exact: min over [0.4, 0.6]^2 of -x1 - 2 x2 = -1.8; IBP gives
    h_0 in [4.8, 5.2], h_1 in [6.2, 6.8], -2.0. beta = 0.5 and kappa = 0.25 fixed: m = -1.9 and
    L = 0.25 CE(f(x), y) + 0.75 CE([0, -m], 0), with z(x) = (5, 6.5)."""
    params = {"beta_start": 0.5, "beta_end": 0.5, "kappa_start": 0.25, "kappa_end": 0.25, "regulariser": 0.0}
    out = _loss(make_method("crown_ibp", params), tiny_net(), X_TINY, Y_TINY, 0.1, 0.2)
    assert out.loss.item() == pytest.approx(0.25 * softplus(-1.5) + 0.75 * softplus(-1.9), rel=1e-5)
    assert out.terms["loss_ibp"].item() == pytest.approx(softplus(-2.0), rel=1e-5)


def test_crown_ibp_schedule_moves_beta_and_kappa_with_eps():
    m = make_method("crown_ibp")
    b = lambda eps: Batch(None, None, None, eps, 0.2)  # noqa: E731 - only eps and eps_final are read
    assert m.schedule(b(0.0)) == (1.0, 1.0)
    assert m.schedule(b(0.05)) == pytest.approx((0.75, 0.75))
    assert m.schedule(b(0.2)) == (0.0, 0.0)
    m = make_method("crown_ibp", {"kappa_end": 0.5})
    assert m.schedule(b(0.1)) == pytest.approx((0.5, 0.75))


@pytest.mark.parametrize("eps", [EPS / 2, EPS])
def test_crown_ibp_with_beta_zero_is_ibp(cnn, eps):
    model, x, y = cnn
    crown = make_method("crown_ibp", {"beta_start": 0.0, "kappa_start": 0.3, "kappa_end": 0.3})
    got = _loss(crown, copy.deepcopy(model), x, y, eps, EPS)
    want = _loss(make_method("ibp", {"robust_weight": 0.7}), copy.deepcopy(model), x, y, eps, EPS)
    assert got.loss.item() == want.loss.item()


def test_crown_ibp_training_bound_is_sound_and_differentiable(cnn):
    """The bound auto_LiRPA gives in training mode (clean-pass BatchNorm statistics) holds at sampled
    points of the ball for the same function, its gradient reaches every parameter, and the bound pass
    leaves the model's running statistics as the clean pass set them."""
    from harness.bounds.lirpa import lirpa_training_margin_bounds

    model, x, y = cnn
    lo, hi = input_box(x, EPS)
    bn = model[2]
    with frozen_batch_stats(model):
        model(x)
        running = bn.running_mean.clone()
        bound = lirpa_training_margin_bounds(model, x, y, lo, hi, "crown-ibp")
        assert torch.equal(bn.running_mean, running)
        C = spec_matrix(y, 10)
        with torch.no_grad():
            for point in [lo, hi] + [lo + (hi - lo) * torch.rand_like(x) for _ in range(10)]:
                margins = torch.einsum("bmk,bk->bm", C, model(point))
                assert (margins >= bound - 1e-4).all()
    bound.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_crown_ibp_training_bound_equals_the_certification_adapter_without_batchnorm():
    from harness.bounds.lirpa import lirpa_margin_bounds, lirpa_training_margin_bounds

    torch.manual_seed(2)
    model = build_model("mlp", *SHAPE, width=16)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    lo, hi = input_box(x, EPS)
    got = lirpa_training_margin_bounds(model, x, y, lo, hi, "crown-ibp")
    want = lirpa_margin_bounds(model.eval(), x, y, EPS, "crown-ibp")
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
