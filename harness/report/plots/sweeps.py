"""Figures of a profile with sweeps: the trade-off curves with their Pareto front, one panel per
comparison, and the paired differences against alpha (from the tables of :mod:`harness.report.tradeoff`)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import pandas as pd

from harness.report.plots.style import method_style, plt, save_figure
from harness.report.stats import pareto_front, t_interval
from harness.report.tradeoff import CERT, CLEAN, COMPARISONS, CURVE_PARAMETER, CURVES

REFERENCES = ("pgd", "standard")
#: The panels of the Pareto figure: AD-CERT against each baseline of :data:`COMPARISONS`, then the
#: bound-based methods (IBP, SABR, CROWN-IBP) against it. A panel is drawn when a method besides
#: AD-CERT has runs; IBP appears in every panel as the common anchor.
PANELS = tuple((method, baseline, "ibp") for method, baseline, _ in COMPARISONS) + (
    ("ad_cert", "sabr", "crown_ibp", "ibp"),)
LABEL_SPACING_PX = 14   # a curve's parameter label is left out when it would sit this close to another


def _mean_ci(values: list[float]) -> tuple[float, float]:
    iv = t_interval(values)
    return iv.mean, (iv.high - iv.mean) if iv.n >= 2 else 0.0


def _curves(mine: list[dict]) -> dict[str, list[tuple[float, float, float, float, float, int]]]:
    """Per method: (knob, certified mean, certified half-interval, clean mean, clean half-interval, seeds)
    for each value of its curve parameter, in ascending order."""
    out = {}
    for method in CURVES:
        by_knob: dict[float, list[dict]] = defaultdict(list)
        for it in mine:
            if it["method"] == method:
                by_knob[it["knob"]].append(it)
        points = []
        for k in sorted(by_knob, key=lambda a: (math.isnan(a), a)):
            x, dx = _mean_ci([float(it["row"][CERT]) for it in by_knob[k]])
            y, dy = _mean_ci([float(it["row"][CLEAN]) for it in by_knob[k]])
            points.append((k, x, dx, y, dy, len(by_knob[k])))
        if points:
            out[method] = points
    return out


def _label(method: str, costs: pd.DataFrame, setting: str, n: int) -> str:
    cost = costs[(costs["setting"] == setting) & (costs["method"] == method) & (costs["variant"] == "")]
    label = method
    knob = CURVE_PARAMETER.get(method)
    if knob:
        label += f" (numbers: {'lambda' if knob == 'box_ratio' else knob})"
    if len(cost):
        own, share = cost["train_min"].mean(), cost["teacher_share_min"].mean()
        label += f", {own:.1f} min" + (f" + {share:.1f} min teacher, amortised" if share > 0 else "")
    return f"{label}, n={n} seeds"


def _annotate_apart(ax, labels: list[tuple[float, float, str, str, tuple[int, int]]]) -> None:
    """Write each (x, y, text, colour, offset) label unless it would sit within LABEL_SPACING_PX of one
    already written (display coordinates, after the axes' limits are final)."""
    ax.figure.canvas.draw()  # final limits: the data-to-pixel transform is the one that will be saved
    placed: list[tuple[float, float]] = []
    for x, y, text, colour, offset in labels:
        px, py = ax.transData.transform((x, y))
        px, py = px + offset[0], py + offset[1]
        if any(math.hypot(px - qx, py - qy) < LABEL_SPACING_PX for qx, qy in placed):
            continue
        placed.append((px, py))
        ax.annotate(text, (x, y), textcoords="offset points", xytext=offset, fontsize=7, color=colour)


def pareto_plot(items: list[dict], costs: pd.DataFrame, published: pd.DataFrame, setting: str,
                dataset: str, eps_label: str, path: Path) -> None:
    """Clean against certified accuracy, one panel per comparison of :data:`PANELS` (shared axes): each
    method's curve through its parameter values (alpha; SABR's lambda) with mean and 95% t-interval over
    seeds, the Pareto front of all runs, PGD and standard training as reference lines. Published points
    (larger models, other certifiers) get a panel of their own, since on the same axes they squash the
    small models' curves into a corner. The legend gives each method's training time (a teacher's
    amortised over the students that share it)."""
    mine = [it for it in items if it["setting"] == setting and not it["ablation"] and not it["teacher_of"]]
    curves = _curves(mine)
    panels = [p for p in PANELS if any(m in curves for m in p if m != "ad_cert")] or [("ad_cert", "ibp")]
    pub = published[(published["dataset"] == dataset) & (published["eps_label"].astype(str) == str(eps_label))]
    n_cols = len(panels) + (1 if len(pub) else 0)
    fig, axes = plt.subplots(1, n_cols, figsize=(5.2 * n_cols, 5.2), squeeze=False)
    axes = list(axes[0])
    ours = axes[:len(panels)]
    for ax in ours[1:]:  # shared axes: the panels compare at a glance
        ax.sharex(ours[0])
        ax.sharey(ours[0])
    front = pareto_front([(float(it["row"][CERT]), float(it["row"][CLEAN])) for it in mine
                          if it["method"] in CURVES])
    handles: dict[str, object] = {}
    pending = []  # each panel's parameter labels, written once every panel's data (and the shared limits) is in
    for ax, panel in zip(ours, panels):
        labels = []
        for rank, method in enumerate(m for m in panel if m in curves):
            pts = curves[method]
            colour, marker = method_style(method)
            n = max(p[5] for p in pts)
            h = ax.errorbar([p[1] for p in pts], [p[3] for p in pts], xerr=[p[2] for p in pts],
                            yerr=[p[4] for p in pts], fmt=f"-{marker}", color=colour, ms=7, capsize=3, alpha=0.9,
                            label=_label(method, costs, setting, n), zorder=4 if method == "ad_cert" else 3)
            handles.setdefault(h.get_label(), h)
            if len(pts) > 1:
                # alternate sides per method so two curves' labels do not land on each other
                offset = (6, 4) if rank % 2 == 0 else (-18, -10)
                labels += [(p[1], p[3], f"{p[0]:g}", colour, offset) for p in pts]
        if front:
            fx, fy = zip(*front)
            h = ax.step(fx, fy, where="post", color="black", lw=1, ls="--", alpha=0.5,
                        label="Pareto front of all runs")[0]
            handles.setdefault(h.get_label(), h)
        for method in REFERENCES:
            rows = [it for it in mine if it["method"] == method]
            if rows:
                clean, _ = _mean_ci([float(it["row"][CLEAN]) for it in rows])
                cert, _ = _mean_ci([float(it["row"][CERT]) for it in rows])
                colour, _ = method_style(method)
                h = ax.axhline(clean, color=colour, ls=":", lw=1.2,
                               label=f"{method} (reference): clean {clean:.2f}%, certified {cert:.2f}%")
                handles.setdefault(h.get_label(), h)
        ax.set_title(" vs ".join(m for m in panel if m in curves), fontsize=10)
        ax.set_xlabel("certified accuracy (%), IBP + CROWN-IBP")
        ax.grid(alpha=0.3)
        ax.set_ylabel("standard (clean) accuracy (%)")
        pending.append((ax, labels))
    if len(pub):
        ax = axes[-1]
        for _, r in pub.iterrows():
            colour, marker = method_style(r["method"])
            ax.plot(r["cert_acc"], r["clean_acc"], marker, mfc="none", mec=colour, ms=9, mew=1.5)
            ax.annotate(f"{r['method']} ({r['arch']})", (r["cert_acc"], r["clean_acc"]), textcoords="offset points",
                        xytext=(5, 3), fontsize=7, color=colour)
        ax.set_title("published (other architectures and certifiers)", fontsize=10)
        ax.set_xlabel("certified accuracy (%), as published")
        ax.grid(alpha=0.3)
        ax.margins(0.25)
    fig.suptitle(f"{setting}: trade-off curves, mean and 95% t-interval over seeds; up and right is better")
    fig.legend(list(handles.values()), list(handles.keys()), fontsize=7, loc="upper center",
               bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False)
    fig.tight_layout()
    for ax, labels in pending:  # after the layout: label spacing is measured in the saved figure's pixels
        _annotate_apart(ax, labels)
    save_figure(fig, path)


def paired_plot(paired: pd.DataFrame, setting: str, path: Path) -> None:
    """A paired table's differences per alpha (AD-CERT minus its baseline), seed-paired: mean and 95%
    t-interval, for each axis."""
    rows = paired[paired["setting"] == setting].sort_values("alpha")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    attack = rows["attack_column"].iloc[0].replace("_acc", "").upper() if len(rows) else "attack"
    comparison = rows["comparison"].iloc[0] if "comparison" in rows and len(rows) else "ad_cert - mtl_ibp"
    method, baseline = (m.strip() for m in comparison.split(" - "))
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
    ax.set_ylabel(f"{method} minus {baseline} (points)")
    ax.set_title(f"{setting}: paired differences over {n} seeds (95% t-interval)\nabove 0: {method} higher")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
