"""Figures of one setting's runs: accuracy against certified accuracy, certified accuracy against eps,
training curves."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from harness.certification.records import GAP_STAGES, gap_col
from harness.report.plots.style import method_style, plt, save_figure
from harness.rundir import RunDir


def _cert_column(df: pd.DataFrame) -> str:
    """Best full-test-set certifier column (cumulative IBP + CROWN-IBP)."""
    return "cert_crown_ibp" if df["cert_crown_ibp"].notna().any() else "cert_ibp"


def _draw_ours(ax, ok: pd.DataFrame, cert: str, annotate: bool = False) -> None:
    for (profile, arch, method), g in ok.groupby(["profile", "arch", "method"]):
        c, m = method_style(method)
        x, y = g[cert].mean(), g["clean_acc"].mean()
        ax.errorbar(x, y, xerr=g[cert].std() if len(g) > 1 else None,
                    yerr=g["clean_acc"].std() if len(g) > 1 else None, fmt=m, color=c, ms=9, capsize=3,
                    zorder=4 if method == "ad_cert" else 3, alpha=0.9, label=f"{method} (ours, {arch}, n={len(g)})")
        if annotate:
            ax.annotate(method, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8, color=c)


def tradeoff_plot(summary: pd.DataFrame, published: pd.DataFrame, dataset: str, eps_label: str, path: Path) -> None:
    """Clean vs certified accuracy, one marker per method (mean +- std over seeds), published points hollow.

    A second panel zooms on our certified-training methods, which otherwise sit on top of each other.
    """
    ok = summary[(summary["status"] == "ok") & (summary["dataset"] == dataset) & (summary["eps_label"] == eps_label)]
    cert = _cert_column(ok)
    certified = ok[ok.groupby("method")[cert].transform("mean") > 0]
    zoom = certified["method"].nunique() >= 2
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(12 if zoom else 6, 4.8), squeeze=False)
    ax = axes[0, 0]
    _draw_ours(ax, ok, cert)
    pub = published[(published["dataset"] == dataset) & (published["eps_label"] == eps_label)]
    for _, r in pub.iterrows():
        c, m = method_style(r["method"])
        ax.plot(r["cert_acc"], r["clean_acc"], m, mfc="none", mec=c, ms=9, mew=1.5,
                label=f"{r['method']} (published, {r['arch']})")
    xlabel = f"certified accuracy (%), {'IBP + CROWN-IBP' if cert == 'cert_crown_ibp' else 'IBP'} (ours)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("standard (clean) accuracy (%)")
    ax.set_title(f"{dataset} eps={eps_label}: accuracy vs certified robustness\n(up and right is better)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="best")
    if zoom:
        ax = axes[0, 1]
        _draw_ours(ax, certified, cert, annotate=True)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("standard (clean) accuracy (%)")
        ax.set_title("zoom: our certified-training methods\n(mean +- std over seeds)")
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def eps_curve_plot(summary: pd.DataFrame, runs_root: Path, dataset: str, eps_label: str, path: Path) -> bool:
    """Own-IBP certified accuracy of each final model as a function of the eps it is certified at."""
    ok = summary[(summary["status"] == "ok") & (summary["dataset"] == dataset) & (summary["eps_label"] == eps_label)]
    curves = []
    for _, r in ok.iterrows():
        meta = RunDir(runs_root / r["run_id"]).path / f"certify-{r['certify_key']}.json"
        sweep = json.loads(meta.read_text()).get("eps_sweep", []) if meta.exists() else []
        for p in sweep:
            curves.append({"method": r["method"], "seed": r["seed"], "eps": p["eps"], "cert": p["cert_ibp"]})
    if not curves:
        return False
    df = pd.DataFrame(curves)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method, g in df.groupby("method"):
        c, m = method_style(method)
        agg = g.groupby("eps")["cert"].agg(["mean", "std"]).reset_index()
        ax.errorbar(agg["eps"], agg["mean"], yerr=agg["std"].fillna(0), color=c, marker=m, capsize=2, label=method)
    ax.axvline(float(ok["eps"].iloc[0]), color="k", ls=":", lw=1, label="training eps")
    ax.set_xlabel("eps (l_inf, pixel scale [0, 1])")
    ax.set_ylabel("IBP-certified accuracy (%)")
    ax.set_title(f"{dataset}, models trained for eps={eps_label}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def training_curves_plot(summary: pd.DataFrame, runs_root: Path, dataset: str, eps_label: str, path: Path) -> bool:
    """Training loss, held-out clean accuracy and IBP-certified accuracy per epoch."""
    ok = summary[(summary["status"] == "ok") & (summary["dataset"] == dataset) & (summary["eps_label"] == eps_label)]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    drawn = False
    for _, r in ok.iterrows():
        metrics = RunDir(runs_root / r["run_id"]).read_metrics()
        if not metrics:
            continue
        m = pd.DataFrame(metrics)
        c, mk = method_style(r["method"])
        label = f"{r['method']} s{r['seed']}"
        axes[0].plot(m["epoch"], m["loss"], color=c, marker=mk, ms=4, label=label)
        axes[1].plot(m["epoch"], m["val_clean"], color=c, marker=mk, ms=4, label=label)
        axes[2].plot(m["epoch"], m["val_ibp_cert"], color=c, marker=mk, ms=4, label=label)
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    for ax, title in zip(axes, ("training loss", "held-out clean accuracy (%)",
                                "held-out IBP-certified accuracy (%) at the epoch's eps")):
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[2].legend(fontsize=7)
    fig.suptitle(f"{dataset} eps={eps_label}: training curves")
    save_figure(fig, path)
    return True


def gap_plot(summary: pd.DataFrame, runs_root: Path, dataset: str, eps_label: str, path: Path) -> bool:
    """Per run, the gap between the best attack and the best certificate after each cascade stage."""

    ok = summary[(summary["status"] == "ok") & (summary["dataset"] == dataset) & (summary["eps_label"] == eps_label)]
    cols = [gap_col(s) for s in GAP_STAGES]
    if ok.empty or not all(c in ok for c in cols):
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    seen = set()
    for _, r in ok.iterrows():
        colour, marker = method_style(r["method"])
        label = r["method"] if r["method"] not in seen else None
        seen.add(r["method"])
        ax.plot(range(len(cols)), [r[c] for c in cols], marker=marker, color=colour, alpha=0.8, label=label)
    ax.set_xticks(range(len(cols)), ["IBP", "+ CROWN-IBP", "+ CROWN", "+ alpha-CROWN", "+ AutoAttack", "+ MILP"])
    ax.set_ylabel("attack accuracy minus certified accuracy (points)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_title(f"{dataset} eps={eps_label}: what each stage decides (one line per run;\n"
                 f"on the prefix the deepest stage covered; 0: every sample decided)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return True
