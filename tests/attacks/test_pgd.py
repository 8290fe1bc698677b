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
    from harness.attacks import clip_to_threat_model, in_threat_model, pgd_attack

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
