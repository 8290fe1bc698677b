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
