"""Figures of a profile with sweeps: the trade-off curves with their Pareto front, and the paired
differences AD-CERT minus MTL-IBP against alpha (from the tables of :mod:`harness.report.tradeoff`)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import pandas as pd

from harness.report.plots.style import method_style, plt, save_figure
from harness.report.stats import pareto_front, t_interval
from harness.report.tradeoff import CERT, CLEAN, SWEPT

CURVES = ("ibp",) + SWEPT
REFERENCES = ("pgd", "standard")


def _mean_ci(values: list[float]) -> tuple[float, float]:
    iv = t_interval(values)
    return iv.mean, (iv.high - iv.mean) if iv.n >= 2 else 0.0


def pareto_plot(items: list[dict], costs: pd.DataFrame, published: pd.DataFrame, setting: str,
                dataset: str, eps_label: str, path: Path) -> None:
    """Clean against certified accuracy: one curve per method through its alpha values (mean and 95%
    t-interval over seeds), the Pareto front of all runs, PGD and standard training as reference
    lines, published points hollow. The legend gives each method's training time (AD-CERT's with its
    teacher amortised over the students that share it)."""
    fig, ax = plt.subplots(figsize=(8, 6))
    mine = [it for it in items if it["setting"] == setting and not it["ablation"] and not it["teacher_of"]]
    all_points = []
    for method in CURVES:
        by_alpha: dict[float, list[tuple[float, float]]] = defaultdict(list)
        for it in mine:
            if it["method"] == method:
                p = (float(it["row"][CERT]), float(it["row"][CLEAN]))
                by_alpha[it["alpha"]].append(p)
                all_points.append(p)
        if not by_alpha:
            continue
        colour, marker = method_style(method)
        xs, ys, xe, ye, alphas = [], [], [], [], sorted(by_alpha, key=lambda a: (math.isnan(a), a))
        for a in alphas:
            x, dx = _mean_ci([p[0] for p in by_alpha[a]])
            y, dy = _mean_ci([p[1] for p in by_alpha[a]])
            xs.append(x), ys.append(y), xe.append(dx), ye.append(dy)
        cost = costs[(costs["setting"] == setting) & (costs["method"] == method) & (costs["variant"] == "")]
        label = method
        if len(cost):
            own, share = cost["train_min"].mean(), cost["teacher_share_min"].mean()
            label += f" ({own:.1f} min" + (f" + {share:.1f} min teacher, amortised" if share > 0 else "") + ")"
        n = max(len(v) for v in by_alpha.values())
        ax.errorbar(xs, ys, xerr=xe, yerr=ye, fmt=f"-{marker}", color=colour, ms=8, capsize=3, alpha=0.9,
                    label=f"{label}, n={n} seeds", zorder=4 if method == "ad_cert" else 3)
        if len(alphas) > 1:
            for x, y, a in zip(xs, ys, alphas):
                ax.annotate(f"{a:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7, color=colour)
    front = pareto_front(all_points)
    if front:
        fx, fy = zip(*front)
        ax.step(fx, fy, where="post", color="black", lw=1, ls="--", alpha=0.6, label="Pareto front of all runs")
    for method in REFERENCES:
        rows = [it for it in mine if it["method"] == method]
        if rows:
            clean, _ = _mean_ci([float(it["row"][CLEAN]) for it in rows])
            cert, _ = _mean_ci([float(it["row"][CERT]) for it in rows])
            colour, _ = method_style(method)
            ax.axhline(clean, color=colour, ls=":", lw=1.2,
                       label=f"{method} (reference): clean {clean:.2f}%, certified {cert:.2f}%")
    pub = published[(published["dataset"] == dataset) & (published["eps_label"].astype(str) == str(eps_label))]
    for _, r in pub.iterrows():
        colour, marker = method_style(r["method"])
        ax.plot(r["cert_acc"], r["clean_acc"], marker, mfc="none", mec=colour, ms=9, mew=1.5,
                label=f"{r['method']} (published, {r['arch']})")
    ax.set_xlabel("certified accuracy (%), IBP + CROWN-IBP, full test set")
    ax.set_ylabel("standard (clean) accuracy (%)")
    ax.set_title(f"{setting}: trade-off curves over alpha (numbers: alpha)\nmean and 95% t-interval over seeds; "
                 f"up and right is better")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the curves fill the corners
    save_figure(fig, path)


def paired_plot(paired: pd.DataFrame, setting: str, path: Path) -> None:
    """AD-CERT minus MTL-IBP per alpha, seed-paired: mean and 95% t-interval, for each axis."""
    rows = paired[paired["setting"] == setting].sort_values("alpha")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    attack = rows["attack_column"].iloc[0].replace("_acc", "").upper() if len(rows) else "attack"
    for k, (name, label, colour) in enumerate((("clean", "clean accuracy", "tab:gray"),
                                               ("attack", f"{attack} accuracy", "tab:orange"),
                                               ("certified", "certified accuracy", "tab:red"))):
        x = rows["alpha"] + (k - 1) * 0.012
        mean = rows[f"diff_{name}_mean"]
        err = [mean - rows[f"diff_{name}_ci_low"], rows[f"diff_{name}_ci_high"] - mean]
        ax.errorbar(x, mean, yerr=err, fmt="o-", color=colour, capsize=3, label=label)
    ax.axhline(0, color="black", lw=1)
    n = int(rows["n_seeds"].min()) if len(rows) else 0
    ax.set_xlabel("alpha (weight of the IBP term)")
    ax.set_ylabel("AD-CERT minus MTL-IBP (points)")
    ax.set_title(f"{setting}: paired differences over {n} seeds (95% t-interval)\nabove 0: AD-CERT higher")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
