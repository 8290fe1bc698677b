"""The seed's 5-point test: how much clean accuracy a run gives up against standard training.

``clean_drop`` = the clean accuracy of the standard-training run of the same setting (profile,
dataset, eps, architecture) and seed minus the run's own, in points: paired by seed, so the
initialisation and batch order are shared. NaN where that standard run is missing (or the run itself
has no numbers). AD-CERT's paper claims certified robustness "within 5 percentage points of
standard accuracy"; the summary_mean table gives the mean drop with its 95% t-interval.
"""

from __future__ import annotations

import math

import pandas as pd

from harness.report.stats import t_interval

#: What pairs a run with its standard-training run.
PAIR_KEYS = ["profile", "dataset", "eps", "arch", "seed"]
#: The paper's bound on the clean drop, in points.
LIMIT = 5.0


def within_limit(mean: float, low: float, high: float, limit: float = LIMIT) -> str:
    """The 5-point test on a mean drop and its 95% interval: ``yes`` (the whole interval is below the
    limit), ``no`` (the whole interval is above it), ``not resolved`` (the interval straddles it, or
    there is no interval: fewer than two seeds)."""
    if math.isnan(mean) or math.isnan(low) or math.isnan(high):
        return "not resolved"
    return "yes" if high < limit else "no" if low > limit else "not resolved"


def add_clean_drop(summary: pd.DataFrame) -> pd.DataFrame:
    """``summary`` (one row per run) with its ``clean_drop`` column filled in."""
    ok = summary["status"] == "ok"
    plain = summary["variant"].fillna("") == ""
    std = summary[ok & plain & (summary["method"] == "standard")]
    reference = std.groupby(PAIR_KEYS)["clean_acc"].mean().rename("_standard_clean")
    out = summary.drop(columns=["clean_drop"], errors="ignore").join(reference, on=PAIR_KEYS)
    drop = (out.pop("_standard_clean") - out["clean_acc"]).astype(float)
    if "clean_drop" in summary:
        out.insert(list(summary.columns).index("clean_drop"), "clean_drop", drop)
    else:
        out["clean_drop"] = drop
    return out


def clean_drop_means(summary: pd.DataFrame, group: list[str]) -> pd.DataFrame:
    """Per ``group``: the mean clean drop over the seeds that have one, its 95% t-interval (NaN below two
    seeds) and that number of seeds."""
    rows = []
    for key, grp in summary.groupby(group, sort=True):
        iv = t_interval(grp["clean_drop"].astype(float).tolist())
        rows.append({**dict(zip(group, key)), "clean_drop_mean": iv.mean, "clean_drop_ci_low": iv.low,
                     "clean_drop_ci_high": iv.high, "clean_drop_n": iv.n})
    return pd.DataFrame(rows, columns=group + ["clean_drop_mean", "clean_drop_ci_low", "clean_drop_ci_high",
                                               "clean_drop_n"])
