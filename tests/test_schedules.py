"""eps ramp and learning-rate schedules."""

import pytest

from harness.schedules import eps_at, lr_at, ramp_fraction


def test_smoothed_ramp_is_monotone_continuous_and_reaches_the_end():
    xs = [i / 1000 for i in range(1001)]
    ys = [ramp_fraction(x, "smoothed") for x in xs]
    assert ys[0] == 0 and ys[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(ys, ys[1:]))
    assert max(b - a for a, b in zip(ys, ys[1:])) < 0.005  # no jump where the pieces meet
    assert ramp_fraction(0.125, "smoothed") < 0.125  # slow start (polynomial), unlike linear


def test_linear_ramp_and_unknown_kind():
    assert ramp_fraction(0.3, "linear") == pytest.approx(0.3)
    with pytest.raises(ValueError, match="known: smoothed, linear"):
        ramp_fraction(0.3, "cosine")


def test_eps_at_respects_start_and_length_in_epochs():
    kw = dict(steps_per_epoch=10, eps_final=0.3, ramp_start=1, ramp_length=2, kind="linear")
    assert eps_at(5, **kw) == 0.0
    assert eps_at(20, **kw) == pytest.approx(0.15)
    assert eps_at(35, **kw) == pytest.approx(0.3)


def test_lr_decays_at_milestones():
    assert lr_at(49, 5e-4, [50, 60], 0.2) == pytest.approx(5e-4)
    assert lr_at(50, 5e-4, [50, 60], 0.2) == pytest.approx(1e-4)
    assert lr_at(65, 5e-4, [50, 60], 0.2) == pytest.approx(2e-5)
