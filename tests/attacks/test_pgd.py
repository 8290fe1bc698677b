"""PGD stays in the box, finds adversarial points, and owns the model's mode."""

import torch

from harness.attacks import pgd_attack, pgd_robust
from harness.models import build_model


def _model():
    torch.manual_seed(0)
    return build_model("cnn_small", (1, 28, 28), 10, [0.13], [0.31]).train()


def test_pgd_stays_inside_the_box_and_data_domain():
    model = _model()
    x = torch.rand(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    adv = pgd_attack(model, x, y, 0.1, steps=5)
    assert ((adv - x).abs() <= 0.1 + 1e-7).all() and adv.min() >= 0 and adv.max() <= 1


def test_pgd_increases_the_loss_and_restores_the_mode():
    model = _model()
    x = torch.rand(32, 1, 28, 28)
    y = torch.randint(0, 10, (32,))
    adv = pgd_attack(model, x, y, 0.2, steps=10)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy
        assert ce(model(adv), y) > ce(model(x), y)
    assert all(p.requires_grad for p in model.parameters())


def test_robust_accuracy_is_at_most_clean_and_eps_zero_changes_nothing():
    model = _model().eval()
    x = torch.rand(64, 1, 28, 28)
    y = model(x).argmax(1)
    assert pgd_robust(model, x, y, 0.0).all()
    robust = pgd_robust(model, x, y, 0.3, steps=20, restarts=2)
    assert robust.float().mean() < 1.0


def test_pgd_counts_a_break_only_inside_the_exact_ball():
    """The attack's box ends are rounded floats; its points are clipped into the exact ball before a break
    counts, and the clipped points it would use lie in B(x, eps) ∩ [0, 1] exactly."""
    from harness.attacks import pgd_attack
    from harness.threat_model import clip_to_threat_model, in_threat_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    x = torch.rand(64, 1, 2, 2)
    y = model(x).argmax(1)
    eps = 0.1
    adv = pgd_attack(model, x, y, eps, steps=5, loss="margin")
    assert not in_threat_model(adv, x, eps).all()  # rounding leaves some of the raw points just outside
    assert in_threat_model(clip_to_threat_model(adv, x, eps), x, eps).all()
    robust = pgd_robust(model, x, y, eps, steps=5, restarts=1)
    assert robust.dtype == torch.bool and robust.shape == (64,)


def _counting(model):
    """(model, list of the batch sizes of its forward passes)."""
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda m, inp: sizes.append(inp[0].shape[0]))
    return model, sizes


def _margin_model_and_data(n: int = 48):
    model = _model().eval()
    torch.manual_seed(1)
    x = torch.rand(n, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)  # correctly classified clean points: some break at eps 0.02, some do not
    return model, x, y


def test_evaluation_pgd_stops_on_broken_samples_with_the_same_verdicts_and_generator_state():
    from harness.attacks.confirm import confirm_broken
    from harness.attacks.pgd import STOP_MARGIN
    from harness.threat_model import clip_to_threat_model

    model, x, y = _margin_model_and_data()
    eps = 0.02
    torch.manual_seed(5)
    full_adv = pgd_attack(model, x, y, eps, steps=20, restarts=3, loss="margin")
    after_full = torch.get_rng_state()
    full = ~confirm_broken(model, x, y, clip_to_threat_model(full_adv, x, eps), eps, batch_size=len(x))
    model, sizes = _counting(model)
    torch.manual_seed(5)
    early_adv = pgd_attack(model, x, y, eps, steps=20, restarts=3, loss="margin", stop_above=STOP_MARGIN)
    assert torch.equal(torch.get_rng_state(), after_full)  # training's generator is not disturbed
    early = ~confirm_broken(model, x, y, clip_to_threat_model(early_adv, x, eps), eps, batch_size=len(x))
    assert 0 < int(full.sum()) < len(x), "the test needs both broken and robust samples"
    assert torch.equal(full, early)
    assert sum(sizes) < 0.8 * 3 * 21 * len(x)  # the broken samples stopped early
    # a sample never stopped took the same path as in the full attack (up to the batch's arithmetic)
    assert torch.allclose(early_adv[full], full_adv[full], atol=1e-6)
    assert ((early_adv - x).abs() <= eps + 1e-7).all()


def test_pgd_without_stopping_is_the_plain_algorithm():
    """The shared step loop, without ``stop_above``, is textbook PGD: best point over steps and restarts."""
    import torch.nn.functional as F

    model, x, y = _margin_model_and_data(8)
    eps, steps, alpha = 0.05, 4, 2.5 * 0.05 / 4
    torch.manual_seed(3)
    got = pgd_attack(model, x, y, eps, steps=steps, restarts=2, loss="ce")
    torch.manual_seed(3)
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    best, best_loss = x.clone(), torch.full((len(x),), float("-inf"))
    for _ in range(2):
        xa = torch.min(torch.max(x + torch.empty_like(x).uniform_(-1, 1) * eps, lo), hi)
        for i in range(steps + 1):
            xa = xa.detach().requires_grad_(True)
            loss = F.cross_entropy(model(xa), y, reduction="none")
            g, = torch.autograd.grad(loss.sum(), xa)
            better = loss.detach() > best_loss
            best_loss = torch.where(better, loss.detach(), best_loss)
            best[better] = xa.detach()[better]
            if i < steps:
                xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), lo), hi)
    assert torch.equal(got, best)
