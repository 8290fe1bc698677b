"""harness.report.stats against values computed independently (textbook numbers, brute force)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from harness.report.stats import (
    hypervolume,
    paired_difference,
    paired_p_value,
    paired_power,
    pairs_needed,
    pareto_front,
    t_interval,
)


def test_t_interval_matches_the_textbook_numbers():
    iv = t_interval([1, 2, 3, 4, 5])
    # mean 3, sd sqrt(2.5), t(0.975, 4) = 2.7764451
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert iv.mean == 3 and iv.n == 5 and iv.sd == pytest.approx(math.sqrt(2.5))
    assert (iv.low, iv.high) == pytest.approx((3 - half, 3 + half), rel=1e-6)
    assert iv.excludes_zero
    assert not t_interval([-1, 1, -2, 2]).excludes_zero
    one = t_interval([0.4])
    assert one.n == 1 and math.isnan(one.low) and not one.excludes_zero


def test_paired_difference_is_the_interval_of_the_differences():
    a, b = [94.1, 94.5, 93.9, 94.3], [93.8, 94.6, 93.5, 94.0]
    iv = paired_difference(a, b)
    ref = t_interval([x - y for x, y in zip(a, b)])
    assert (iv.mean, iv.low, iv.high) == (ref.mean, ref.low, ref.high)
    assert 0 < paired_p_value(a, b) < 1
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1, 2], [1])


def test_power_and_seeds_needed_match_known_values():
    # two-sided paired t-test, alpha 0.05, effect size 1 (delta = sd): 10 pairs give power 0.803
    assert paired_power(1.0, 1.0, 10) == pytest.approx(0.803, abs=0.002)
    assert pairs_needed(1.0, 1.0) == 10
    # effect size 0.5 needs 34 pairs for 80% power
    assert pairs_needed(0.3, 0.6) == 34
    assert pairs_needed(0.3, 0.0) is None


def test_pareto_front_and_hypervolume_against_brute_force():
    gen = np.random.default_rng(0)
    pts = [tuple(p) for p in gen.uniform(0, 10, size=(12, 2)).round(2)]
    front = pareto_front(pts)
    for p in pts:
        dominated = any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in pts)
        assert (p in front) == (not dominated)
    ref = (2.0, 1.0)
    # brute force: the dominated area on a fine grid of cell centres
    step = 0.01
    xs = np.arange(ref[0] + step / 2, 10, step)
    ys = np.arange(ref[1] + step / 2, 10, step)
    grid_x, grid_y = np.meshgrid(xs, ys)
    covered = np.zeros_like(grid_x, dtype=bool)
    for x, y in pts:
        covered |= (grid_x <= x) & (grid_y <= y)
    assert hypervolume(pts, ref) == pytest.approx(covered.sum() * step * step, rel=2e-3)
    assert hypervolume([(3, 1), (1, 3)], (0, 0)) == 5
    assert hypervolume([(1, 1)], (2, 2)) == 0
    assert hypervolume(list(itertools.repeat((4.0, 4.0), 3)), (0, 0)) == 16
