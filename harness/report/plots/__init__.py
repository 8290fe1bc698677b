"""Figures from stored records (``make figures``), per profile under ``plots/<profile>/``.

:mod:`harness.report.plots.runs`: per setting, accuracy vs certified accuracy, certified accuracy vs eps and
training curves; :mod:`harness.report.plots.sweeps`: for profiles with sweeps, the Pareto plot of the
trade-off curves and the paired differences against alpha.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.config.constraints import ConfigError
from harness.config.profile import Profile, load_profile
from harness.config.settings import RUNS
from harness.report.plots.runs import eps_curve_plot, gap_plot, tradeoff_plot, training_curves_plot
from harness.report.plots.style import PLOTS
from harness.report.plots.sweeps import paired_plot, pareto_plot
from harness.report.tables import PUBLISHED, RESULTS
from harness.report.tradeoff import COMPARISONS, run_items
from harness.rundir import remove_stale_temporaries

__all__ = ["PLOTS", "build_figures"]


def build_figures(profiles: list | None = None, results_dir: Path | None = None, plots_dir: Path | None = None,
                  runs_root: Path | None = None, log=print) -> list[Path]:
    """Every figure of each profile from ``<results>/<profile>/summary.csv`` and the run records.

    ``profiles``: Profile objects or names (default: every profile with a summary under ``results_dir``).
    Figures go to ``<plots_dir>/<profile>/``; returns the files written.
    """

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
    objects = {p.name: p for p in profiles or [] if isinstance(p, Profile)}
    for name in names:
        summary_path = results_dir / name / "summary.csv"
        if not summary_path.exists():
            raise FileNotFoundError(f"{summary_path} does not exist; run `make tables` (or `make reproduce`) first")
        summary = pd.read_csv(summary_path, dtype={"variant": str}).fillna({"variant": ""})
        folder = plots_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
        plain = summary[summary["variant"] == ""]
        ok = plain[plain["status"] == "ok"]
        swept = _sweep_figures(objects.get(name), name, results_dir, summary, published, folder)
        written += swept
        for (dataset, label), _ in ok.groupby(["dataset", "eps_label"]):
            slug = f"{dataset}_eps{str(label).replace('/', '-')}"
            if not swept:  # with sweeps, the Pareto figure shows these runs with the swept ones
                p = folder / f"tradeoff_{slug}.png"
                tradeoff_plot(plain, published, dataset, label, p)
                written.append(p)
            for fig_name, fn in (("cert_vs_eps", eps_curve_plot), ("training_curves", training_curves_plot),
                                 ("gap", gap_plot)):
                p = folder / f"{fig_name}_{slug}.png"
                if fn(plain, runs_root, dataset, label, p):
                    written.append(p)
        log(f"wrote {len(written)} figure(s) to {folder}")
    return written


def _sweep_figures(profile, name: str, results_dir: Path, summary: pd.DataFrame, published: pd.DataFrame,
                   folder: Path) -> list[Path]:
    """The Pareto and paired-difference figures of a profile with sweeps (none otherwise)."""

    costs_path = results_dir / name / "costs.csv"
    if not costs_path.exists():
        return []
    if profile is None:
        try:
            profile = load_profile(name)
        except ConfigError:
            return []  # a profile from elsewhere, not named here: its tables stand, its sweep figures wait
    items = run_items(profile, summary)
    costs = pd.read_csv(costs_path, dtype={"variant": str}).fillna({"variant": ""})
    paired = {}
    for _, _, table in COMPARISONS:
        try:
            paired[table] = pd.read_csv(results_dir / name / f"{table}.csv")
        except (pd.errors.EmptyDataError, FileNotFoundError):  # no pair finished yet, or no such baseline
            paired[table] = pd.DataFrame()
    out = []
    for s in profile.settings:
        setting = f"{s.dataset} eps {s.eps_label}"
        if not any(it["setting"] == setting for it in items):
            continue
        slug = f"{s.dataset}_eps{s.eps_label.replace('/', '-')}"
        path = folder / f"pareto_{slug}.png"
        pareto_plot(items, costs, published, setting, s.dataset, s.eps_label, path)
        out.append(path)
        for table, df in paired.items():
            if len(df) and (df["setting"] == setting).any():
                path = folder / f"{table}_{slug}.png"
                paired_plot(df, setting, path)
                out.append(path)
    return out
