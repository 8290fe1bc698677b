"""Each method's loss is the formula of docs/methods.md, computed independently here."""

import copy

import pytest
import torch
import torch.nn.functional as F

from harness.attacks import pgd_attack
from harness.bounds.ibp import ibp_bounds
from harness.bounds.spec import spec_matrix
from harness.models import build_model, frozen_batch_stats
from harness.threat_model import input_box
from harness.training.methods import METHODS, Batch, make_method, robust_ce_from_margins

SHAPE = ((1, 28, 28), 10, [0.13], [0.31])
EPS = 0.05


@pytest.fixture()
def setup():
    torch.manual_seed(1)
    student = build_model("cnn_small", *SHAPE).train()
    teacher = build_model("cnn_small", *SHAPE).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    x = torch.rand(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    return student, teacher, x, y


def _kl(t_logits, s_logits):
    p = F.softmax(t_logits, 1)
    return (p * (F.log_softmax(t_logits, 1) - F.log_softmax(s_logits, 1))).sum(1).mean()


def _run(method, student, teacher, x, y, seed=7, restore=True):
    """The method's loss; the student's BN running statistics are left as they were (for references)."""
    state = copy.deepcopy(student.state_dict())
    torch.manual_seed(seed)
    try:
        with frozen_batch_stats(student):
            return method(Batch(student, x, y, EPS, 2 * EPS, teacher))
    finally:
        if restore:
            student.load_state_dict(state)


def _reference(student, teacher, x, y, alpha, w, variant="ad", seed=7):
    torch.manual_seed(seed)
    with frozen_batch_stats(student):
        logits = student(x)
        ce = F.cross_entropy(logits, y)
        t = teacher(x)
        x_adv = pgd_attack(student, x, y, EPS, steps=1)
        if variant == "natkl":
            l_ad = _kl(t, logits)
        elif variant == "rslad":
            l_ad = _kl(t, logits) / 6 + 5 * _kl(t, student(x_adv)) / 6
        else:
            l_ad = _kl(t, student(x_adv))
        lo, hi = input_box(x, EPS)
        m = ibp_bounds(student, lo, hi, spec_matrix(y, 10)).lower
        l_ibp = F.cross_entropy(torch.cat([torch.zeros(len(y), 1), -m], 1), torch.zeros(len(y), dtype=torch.long))
        inner = alpha * l_ibp + (1 - alpha) * l_ad if alpha > 0 else l_ad
        return (1 - w) * ce + w * inner


@pytest.mark.parametrize("alpha, w, variant", [(0.3, 1.0, "ad"), (0.3, 0.6, "ad"), (0.0, 0.8, "ad"),
                                               (0.5, 1.0, "rslad"), (0.5, 1.0, "natkl")])
def test_ad_cert_is_the_authors_loss(setup, alpha, w, variant):
    student, teacher, x, y = setup
    method = make_method("ad_cert", {"alpha": alpha, "robust_weight": w, "variant": variant, "regulariser": 0.0})
    got = _run(method, student, teacher, x, y).loss
    want = _reference(student, teacher, x, y, alpha, w, variant)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_ad_cert_teacher_is_frozen_and_gets_no_gradient(setup):
    student, teacher, x, y = setup
    before = [p.clone() for p in teacher.parameters()]
    out = _run(make_method("ad_cert", {"alpha": 0.5}), student, teacher, x, y, restore=False)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    assert not teacher.training
    assert all(p.grad is not None for p in student.parameters())


def test_ad_cert_teacher_matters(setup):
    student, teacher, x, y = setup
    other = build_model("cnn_small", *SHAPE).eval()
    m = make_method("ad_cert", {"alpha": 0.2})
    assert _run(m, student, teacher, x, y).loss.item() != pytest.approx(_run(m, student, other, x, y).loss.item())


def test_mtl_ibp_is_alpha_ibp_plus_adversarial_ce(setup):
    student, _, x, y = setup
    got = _run(make_method("mtl_ibp", {"alpha": 0.4, "regulariser": 0.0}), student, None, x, y).loss
    torch.manual_seed(7)
    with frozen_batch_stats(student):
        student(x)
        x_adv = pgd_attack(student, x, y, EPS, steps=1)
        lo, hi = input_box(x, EPS)
        m = ibp_bounds(student, lo, hi, spec_matrix(y, 10)).lower
        want = 0.4 * robust_ce_from_margins(m) + 0.6 * F.cross_entropy(student(x_adv), y)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_ibp_loss_is_ce_on_worst_case_margins_and_regulariser_fades(setup):
    student, _, x, y = setup
    m = torch.randn(16, 9)
    ce = F.cross_entropy(torch.cat([torch.zeros(16, 1), -m], 1), torch.zeros(16, dtype=torch.long))
    assert robust_ce_from_margins(m).item() == pytest.approx(ce.item(), rel=1e-6)
    method = make_method("ibp", {"regulariser": 0.5})
    with frozen_batch_stats(student):
        mid = method(Batch(student, x, y, EPS, 2 * EPS))
    with frozen_batch_stats(student):
        end = method(Batch(student, x, y, 2 * EPS, 2 * EPS))
    assert mid.terms["reg"] > 0 and end.terms["reg"] == 0


def test_attacks_run_in_eval_mode_and_bn_statistics_come_from_the_clean_pass(setup):
    student, _, x, y = setup
    bn = student[2]
    running = bn.running_mean.clone()
    with frozen_batch_stats(student):
        make_method("pgd", {"attack_steps": 2})(Batch(student, x, y, EPS, 2 * EPS))
    # exactly one momentum update: the clean pass; attack (eval) and adversarial pass (frozen) add none
    h = student[1](student[0](x))
    expected = (1 - bn.momentum) * running + bn.momentum * h.mean((0, 2, 3))
    assert torch.allclose(bn.running_mean, expected, atol=1e-6)
    assert student.training


@pytest.mark.parametrize("name, params, message", [
    ("mtl_ibp", {"alpha": 2.0}, "alpha = 2.0: input should be less than or equal to 1"),
    ("ad_cert", {"teacher_input": "noisy"}, "teacher_input = 'noisy': input should be 'clean' or 'adv'"),
    ("pgd", {"attack_steps": 0}, "attack_steps = 0: input should be greater than or equal to 1"),
    ("taps", {}, "unknown method 'taps'"),
])
def test_bad_parameters_are_clear_errors(name, params, message):
    with pytest.raises(ValueError) as e:
        make_method(name, params)
    assert message in str(e.value)


def test_every_method_gives_a_finite_differentiable_loss(setup):
    student, teacher, x, y = setup
    for name, cls in METHODS.items():
        out = _run(make_method(name), student, teacher if cls.needs_teacher else None, x, y)
        assert torch.isfinite(out.loss) and out.loss.requires_grad, name


def _shi_by_selection(preact, r0, tol):
    """Shi et al.'s regularisers written the obvious way (methods.md), by boolean selection."""
    tight, relu = [], []
    for lo, hi in preact:
        c, r = (hi + lo) / 2, (hi - lo) / 2
        tight.append(torch.relu(tol - r0 / r.mean()) / tol)
        ca, ci = c[lo > 0], c[hi < 0]
        term = torch.zeros(())
        if ca.numel() and ci.numel():
            a = ca.mean() / -ci.mean()
            term = term + torch.relu(tol - torch.minimum(a, 1 / a))
            if ca.numel() > 1 and ci.numel() > 1:
                v = ca.var() / ci.var()
                term = term + torch.relu(tol - torch.minimum(v, 1 / v))
        relu.append(term / tol)
    return torch.stack(tight).mean() + torch.stack(relu).mean()


@pytest.mark.parametrize("offset,r0", [(0.0, 0.1), (2.0, 0.3), (-1.5, 0.1), (0.0, 5.0)])
def test_shi_regularisers_match_the_formula_by_boolean_selection(offset, r0):
    """Value and gradient, with centers off zero (moments must not cancel) and every term active somewhere."""
    from harness.training.methods import shi_regularisers

    torch.manual_seed(3)
    leaves = []
    for shape in [(8, 4, 6, 6), (8, 20), (16, 8, 5, 5)]:
        a, b = torch.randn(shape) * 1.7 + offset, torch.randn(shape).abs() * 0.5
        a = torch.where(a > 0, 3 * a, a)  # unbalanced active/inactive means and variances: L_relu > 0
        leaves.append((a.requires_grad_(), b.requires_grad_()))
    cl = leaves[2][0].detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    leaves[2] = (cl, leaves[2][1])  # a channels-last layer, as the own IBP produces on the CPU
    preact = [(a - b, a + b) for a, b in leaves]
    r0 = torch.tensor(r0)
    got = shi_regularisers(preact, r0, 0.5)
    want = _shi_by_selection(preact, r0, 0.5)
    assert want.item() > 0.05  # the comparison is not of two zeros
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    params = [t for pair in leaves for t in pair]
    g_got = torch.autograd.grad(got, params)
    g_want = torch.autograd.grad(want, params)
    for g1, g2 in zip(g_got, g_want):
        assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-7)


def test_shi_regularisers_skip_a_layer_without_active_or_inactive_units():
    from harness.training.methods import shi_regularisers

    torch.manual_seed(0)
    lo = torch.rand(4, 10) + 0.1          # every unit active: no L_relu term for this layer
    one = torch.tensor([[-1.0, 2.0, 0.5]]), torch.tensor([[-0.5, 3.0, 1.0]])  # one inactive, one active unit
    preact = [(lo, lo + 1), one]
    r0 = torch.tensor(0.2)
    got = shi_regularisers(preact, r0, 0.5)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(_shi_by_selection(preact, r0, 0.5).item(), rel=1e-6)

@pytest.mark.cuda
def test_shi_regularisers_on_cuda_match_the_cpu():
    """The hand-written autograd function of the regularisers, value and gradient, on CUDA."""
    from harness.training.methods import shi_regularisers

    gen = torch.Generator().manual_seed(0)
    layers = [(torch.randn(8, 4, 5, 5, generator=gen), torch.rand(8, 4, 5, 5, generator=gen)),
              (torch.randn(8, 30, generator=gen), torch.rand(8, 30, generator=gen))]
    results = {}
    for dev in ("cpu", "cuda"):
        pre = [(c.to(dev) - r.to(dev), c.to(dev) + r.to(dev)) for c, r in layers]
        leaves = [t.requires_grad_(True) for pair in pre for t in pair]
        value = shi_regularisers(pre, torch.tensor(0.05, device=dev))
        grads = torch.autograd.grad(value, leaves)
        results[dev] = (value.detach().cpu(), [g.cpu() for g in grads])
    assert torch.allclose(results["cpu"][0], results["cuda"][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results["cpu"][1], results["cuda"][1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
