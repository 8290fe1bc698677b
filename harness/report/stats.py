"""Statistics of paired seeds: confidence intervals, the seeds needed to see a difference, and the
area a trade-off curve dominates.

Runs with the same seed share their initialisation and batch order (``tests/training/test_train.py`` checks
it), so two methods' runs of one seed form a pair, and the per-seed difference is the quantity whose
mean and confidence interval answer "does A beat B?". The distributions come from scipy.stats
(Student t, noncentral t); nothing here computes a quantile by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as st

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """Mean of a sample with a two-sided Student-t confidence interval (NaN bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int
    sd: float

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def text(self, digits: int = 2) -> str:
        if self.n < 2:
            return f"{self.mean:+.{digits}f} (n={self.n})"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of ``values`` with its Student-t confidence interval (scipy.stats.t)."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, math.nan)
    sd = float(x.std(ddof=1))
    if sd == 0:
        return Interval(mean, mean, mean, n, 0.0)
    low, high = st.t.interval(confidence, n - 1, loc=mean, scale=sd / math.sqrt(n))
    return Interval(mean, float(low), float(high), n, sd)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and t-interval of the per-pair differences a_i - b_i (a paired t-test's interval)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples must have the same length, got {len(a)} and {len(b)}")
    return t_interval([x - y for x, y in zip(a, b)], confidence)


def paired_p_value(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test (scipy.stats.ttest_rel); NaN below two pairs or no spread."""
    if len(a) < 2 or np.std(np.subtract(a, b)) == 0:
        return math.nan
    return float(st.ttest_rel(a, b).pvalue)


def paired_power(delta: float, sd: float, n: int, alpha: float = 1 - CONFIDENCE) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs to detect a true mean difference ``delta``
    when the differences have standard deviation ``sd`` (noncentral t, scipy.stats.nct)."""
    if n < 2 or sd <= 0:
        return math.nan
    df = n - 1
    crit = st.t.ppf(1 - alpha / 2, df)
    nc = delta / (sd / math.sqrt(n))
    return float(st.nct.sf(crit, df, nc) + st.nct.cdf(-crit, df, nc))


def pairs_needed(delta: float, sd: float, power: float = 0.8, alpha: float = 1 - CONFIDENCE,
                 limit: int = 100_000) -> int | None:
    """Smallest number of paired seeds whose t-test detects ``delta`` with ``power`` (None above ``limit``)."""
    if not sd > 0:
        return None
    n = 2
    while n <= limit:
        if paired_power(delta, sd, n, alpha) >= power:
            return n
        n = n + 1 if n < 200 else int(n * 1.1)
    return None


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points not dominated by another (both coordinates higher is better), sorted by the first."""
    pts = sorted(set(points), key=lambda p: (-p[0], -p[1]))
    front, best_y = [], -math.inf
    for x, y in pts:
        if y > best_y:
            front.append((x, y))
            best_y = y
    return sorted(front)


def hypervolume(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by ``points`` and dominating ``reference`` (both coordinates higher is better).

    The union of the rectangles [ref_x, x] x [ref_y, y]; points not above the reference add nothing.
    """
    rx, ry = reference
    area, prev_y = 0.0, ry
    for x, y in sorted(pareto_front([p for p in points if p[0] > rx and p[1] > ry]), key=lambda p: -p[0]):
        if y > prev_y:
            area += (x - rx) * (y - prev_y)
            prev_y = y
    return area
