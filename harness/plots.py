"""Figures from stored records: trade-off per setting, certified accuracy vs eps, training curves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from harness.config import REPO, RUNS  # noqa: E402
from harness.tables import PUBLISHED, RESULTS  # noqa: E402
from harness.rundir import RunDir  # noqa: E402

PLOTS = REPO / "plots"
METHOD_STYLE = {  # one colour and marker per method, the same in every figure
    "standard": ("tab:gray", "o"), "pgd": ("tab:orange", "s"), "ibp": ("tab:blue", "^"),
    "mtl_ibp": ("tab:green", "D"), "cc_ibp": ("tab:olive", "P"), "exp_ibp": ("tab:cyan", "X"),
    "ad_cert": ("tab:red", "*"), "crown_ibp": ("tab:purple", "v"), "sabr": ("tab:brown", "<"),
}


def _style(method: str) -> tuple[str, str]:
    return METHOD_STYLE.get(method, ("black", "o"))


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def _cert_column(df: pd.DataFrame) -> str:
    """Best full-test-set certifier column (cumulative IBP + CROWN-IBP)."""
    return "cert_crown_ibp" if df["cert_crown_ibp"].notna().any() else "cert_ibp"


def _draw_ours(ax, ok: pd.DataFrame, cert: str, annotate: bool = False) -> None:
    for (profile, arch, method), g in ok.groupby(["profile", "arch", "method"]):
        c, m = _style(method)
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
        c, m = _style(r["method"])
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
    _save(fig, path)


def eps_curve_plot(summary: pd.DataFrame, runs_root: Path, dataset: str, eps_label: str, path: Path) -> bool:
    """Own-IBP certified accuracy of each final model as a function of the eps it is certified at."""
    ok = summary[(summary["status"] == "ok") & (summary["dataset"] == dataset) & (summary["eps_label"] == eps_label)]
    curves = []
    for _, r in ok.iterrows():
        meta = RunDir(runs_root / r["run_id"]).path / "certify.json"
        sweep = json.loads(meta.read_text()).get("eps_sweep", []) if meta.exists() else []
        for p in sweep:
            curves.append({"method": r["method"], "seed": r["seed"], "eps": p["eps"], "cert": p["cert_ibp"]})
    if not curves:
        return False
    df = pd.DataFrame(curves)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method, g in df.groupby("method"):
        c, m = _style(method)
        agg = g.groupby("eps")["cert"].agg(["mean", "std"]).reset_index()
        ax.errorbar(agg["eps"], agg["mean"], yerr=agg["std"].fillna(0), color=c, marker=m, capsize=2, label=method)
    ax.axvline(float(ok["eps"].iloc[0]), color="k", ls=":", lw=1, label="training eps")
    ax.set_xlabel("eps (l_inf, pixel scale [0, 1])")
    ax.set_ylabel("IBP-certified accuracy (%)")
    ax.set_title(f"{dataset}, models trained for eps={eps_label}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
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
        c, mk = _style(r["method"])
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
    _save(fig, path)
    return True


def build_figures(profiles: list | None = None, results_dir: Path | None = None, plots_dir: Path | None = None,
                  runs_root: Path | None = None, log=print) -> list[Path]:
    """Every figure of each profile from ``<results>/<profile>/summary.csv`` and the run records.

    ``profiles``: Profile objects or names (default: every profile with a summary under ``results_dir``).
    Figures go to ``<plots_dir>/<profile>/``; returns the files written.
    """
    from harness.config import Profile

    results_dir, plots_dir, runs_root = results_dir or RESULTS, plots_dir or PLOTS, runs_root or RUNS
    if profiles is None:
        names = sorted(p.parent.name for p in results_dir.glob("*/summary.csv"))
        if not names:
            raise FileNotFoundError(f"no results/<profile>/summary.csv under {results_dir}; run `make tables` "
                                    f"(or `make reproduce`) first")
    else:
        names = [p.name if isinstance(p, Profile) else str(p) for p in profiles]
    written = []
    published = pd.read_csv(PUBLISHED)
    for name in names:
        summary_path = results_dir / name / "summary.csv"
        if not summary_path.exists():
            raise FileNotFoundError(f"{summary_path} does not exist; run `make tables` (or `make reproduce`) first")
        summary = pd.read_csv(summary_path, dtype={"variant": str}).fillna({"variant": ""})
        folder = plots_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        plain = summary[summary["variant"] == ""]
        ok = plain[plain["status"] == "ok"]
        for (dataset, label), _ in ok.groupby(["dataset", "eps_label"]):
            slug = f"{dataset}_eps{str(label).replace('/', '-')}"
            p = folder / f"tradeoff_{slug}.png"
            tradeoff_plot(plain, published, dataset, label, p)
            written.append(p)
            for fig_name, fn in (("cert_vs_eps", eps_curve_plot), ("training_curves", training_curves_plot)):
                p = folder / f"{fig_name}_{slug}.png"
                if fn(plain, runs_root, dataset, label, p):
                    written.append(p)
        log(f"wrote {len(written)} figure(s) to {folder}")
    return written
