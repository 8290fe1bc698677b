"""Result tables, built from stored run records only (no training, no certification).

Each profile's tables go to ``results/<profile>/``:

summary.csv          one tidy row per run (dataset, eps, method, variant, arch, seed), with its clean
                     drop against the standard run of its seed (:mod:`harness.report.clean_drop`)
summary_mean.csv     mean and standard deviation over seeds; the clean drop's mean and 95% t-interval
paper_comparison.csv our mean rows beside the published numbers of benchmarks/published.csv

and a Markdown version of each (``.md``) for the README. Nothing in them depends on the machine
that made them (no absolute paths).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from harness.certification.records import (
    CERTIFIERS,
    GAP_STAGES,
    check_invariants,
    col,
    covered_key,
    gap_col,
    stage_gaps,
    summarize,
)
from harness.certification.run import certify_paths, is_certified
from harness.config.profile import Profile, load_profile
from harness.config.settings import BENCHMARKS, REPO, RUNS
from harness.data import DatasetUnavailableError, ensure_dataset
from harness.report.clean_drop import LIMIT, add_clean_drop, clean_drop_means, within_limit
from harness.report.markdown import markdown_table
from harness.report.tradeoff import tradeoff_tables
from harness.rundir import RunDir, atomic_write_text, remove_stale_temporaries

RESULTS = REPO / "results"
PUBLISHED = BENCHMARKS / "published.csv"

KEYS = ["profile", "dataset", "eps", "eps_label", "method", "variant", "arch", "seed"]
ACC_COLUMNS = ["clean_acc", "pgd_acc", "aa_acc"] + [col(c) for c in CERTIFIERS] + [
    "robust_lower", "robust_upper", "unknown"]
#: Per-run numbers the mean table averages over seeds (accuracies, and the MILP's counts).
AGG_COLUMNS = ACC_COLUMNS + ["counterexamples", "complete_unknown"]
#: How far each budgeted stage got: the test-set prefix it covered (certify-<key>.json's n_<stage>).
COVERED = ("crown", "alpha-crown", "autoattack", "complete")
#: Stages whose wall time the summary shows (certify-<key>.json's times_s).
TIMED_STAGES = ("pgd", "crown", "alpha-crown", "autoattack", "complete")


def time_col(stage: str) -> str:
    """The summary column of a stage's wall time, e.g. ``time_alpha_crown_s``."""
    return f"time_{stage.replace('-', '_')}_s"


#: Columns of summary.csv that are measured wall times (the only ones two runs of the same code may differ in).
TIME_COLUMNS = ("train_time_s", "teacher_time_s", "cert_time_s") + tuple(time_col(s) for s in TIMED_STAGES)
SUMMARY_COLUMNS = KEYS + ["status", "n_test"] + ACC_COLUMNS + ["clean_drop"] + [covered_key(s) for s in COVERED] + [
    "counterexamples", "complete_unknown", "epochs"] + list(TIME_COLUMNS) + [
    gap_col(s) for s in GAP_STAGES] + ["run_id", "certify_key"]


def dataset_unavailable(name: str) -> str | None:
    """Why a dataset cannot be loaded here (in words that hold on any machine), or None when it can."""

    try:
        ensure_dataset(name, allow_download=False)
    except DatasetUnavailableError:
        return f"{name} data not available on the machine that made this table (README, Data)"
    return None


def profile_rows(profile: Profile, runs_root: Path | None = None) -> list[dict]:
    """Summary rows of one profile: measured where records exist, else the reason they don't."""
    runs_root = runs_root or RUNS
    rows = []
    missing: dict[str, str | None] = {}
    for p in profile.plan():
        cfg = p.cfg
        run = RunDir.of(cfg, runs_root)
        row = {"profile": profile.name, "dataset": cfg.dataset, "eps": cfg.eps, "eps_label": p.setting.eps_label,
               "method": cfg.method, "variant": p.variant, "arch": cfg.arch, "seed": cfg.seed, "epochs": cfg.epochs,
               "run_id": cfg.run_id, "certify_key": profile.certify_for(p).key}
        csv_path, meta_path = certify_paths(run, profile.certify_for(p))
        if is_certified(run, profile.certify_for(p)):  # complete records only: a truncated CSV is "not run"
            df = pd.read_csv(csv_path)
            check_invariants(df, where=f"run {cfg.run_id}")
            meta = json.loads(meta_path.read_text())
            manifest = run.read_manifest()
            row.update(summarize(df))
            row.update({gap_col(s): g for s, g in stage_gaps(df).items()})
            row.update({"status": "ok", **{covered_key(s): meta.get(covered_key(s), 0) for s in COVERED},
                        "train_time_s": manifest.get("train_time_s"),
                        "teacher_time_s": manifest.get("teacher_train_time_s"),
                        "cert_time_s": sum(meta["times_s"].values()),
                        **{time_col(s): meta["times_s"].get(s) for s in TIMED_STAGES}})
        else:
            if cfg.dataset not in missing:
                missing[cfg.dataset] = dataset_unavailable(cfg.dataset)
            reason = missing[cfg.dataset]
            row["status"] = f"skipped: {reason}" if reason else "not run"
        rows.append(row)
    return rows


def _write(df: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, df.to_csv(index=False))
    atomic_write_text(path.with_suffix(".md"), markdown_table(df))


def build_tables(profiles: list[Profile | str] | None = None, runs_root: Path | None = None,
                 results_dir: Path | None = None, log=print) -> dict[str, dict[str, pd.DataFrame]]:
    """Build every table of each profile (default: each under benchmarks/ with measured runs).

    Returns ``{profile name: {table name: DataFrame}}``; files go to ``<results_dir>/<profile>/``.
    """
    results_dir = results_dir or RESULTS
    explicit = profiles is not None
    names = profiles if explicit else sorted(p.stem for p in BENCHMARKS.glob("*.toml"))
    out = {}
    for item in names:
        profile = item if isinstance(item, Profile) else load_profile(item)
        summary = pd.DataFrame(profile_rows(profile, runs_root), columns=SUMMARY_COLUMNS)
        if not explicit and not (summary["status"] == "ok").any():
            continue
        tables = profile_tables(profile, summary)
        folder = results_dir / profile.name
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
        for name, df in tables.items():
            _write(df, folder / f"{name}.csv")
        skipped = summary[summary["status"].str.startswith("skipped")]
        for (ds, label), grp in skipped.groupby(["dataset", "eps_label"]):
            log(f"skipped {ds} eps {label} ({len(grp)} runs): {grp['status'].iloc[0][len('skipped: '):]}")
        log(f"wrote {', '.join(f'{n}.csv' for n in tables)} (+ .md) to {folder}")
        out[profile.name] = tables
    return out


def profile_tables(profile: Profile, summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The tables of one profile from its summary rows."""
    summary = add_clean_drop(summary.sort_values(["dataset", "eps", "method", "variant", "seed"], kind="stable"))
    ok = summary[summary["status"] == "ok"]
    group = ["profile", "dataset", "eps", "eps_label", "method", "variant", "arch"]
    if len(ok):
        agg = ok.groupby(group, sort=True)[AGG_COLUMNS].agg(["mean", "std"])
        agg.columns = [f"{a}_{b}" for a, b in agg.columns]
        agg = agg.reset_index()
        agg.insert(len(group), "n_seeds", ok.groupby(group, sort=True).size().values)
    else:
        agg = pd.DataFrame(columns=group + ["n_seeds"] + [f"{a}_{b}" for a in AGG_COLUMNS for b in ("mean", "std")])
    agg = agg.merge(clean_drop_means(ok, group), on=group, how="left")  # the seed's 5-point test

    published = pd.read_csv(PUBLISHED)
    best = _best_certified(agg[agg["variant"] == ""] if len(agg) else agg)
    comparison = best.merge(published.drop(columns=["eps"]), on=["dataset", "eps_label", "method"], how="left",
                            suffixes=("", "_published"))
    comparison = comparison.rename(columns={"arch_published": "published_arch", "clean_acc": "published_clean_acc",
                                            "cert_acc": "published_cert_acc", "source": "published_source"})

    return {"summary": summary, "summary_mean": agg, "paper_comparison": comparison,
            **tradeoff_tables(profile, summary)}


def _best_certified(agg: pd.DataFrame) -> pd.DataFrame:
    """Our mean clean and best certified accuracy per setting (the certifier that certified most)."""
    out = agg[["profile", "dataset", "eps", "eps_label", "method", "arch", "n_seeds",
               "clean_acc_mean", "clean_acc_std", "pgd_acc_mean"]].copy()
    # crown-ibp's column is cumulative (IBP or CROWN-IBP): the best full-test-set certificate
    out["cert_acc_mean"] = agg[f"{col('crown-ibp')}_mean"] if len(agg) else []
    out["cert_by"] = "ibp + crown-ibp"
    return out


README_BEGIN = "<!-- results table: generated by harness.report.tables.readme_results_table from results/cpu/summary_mean.csv -->"
README_END = "<!-- end of results table -->"


def readme_results_table(agg: pd.DataFrame, profile: Profile) -> str:
    """The README's results table for ``profile``: mean ± std over seeds per (dataset, eps, method).

    Rows follow the profile's order of settings and methods. "robust accuracy" on the whole test set
    is bounded below by every certificate (IBP, CROWN-IBP, CROWN, alpha-CROWN, the MILP, each within
    its budget) and above by every attack (PGD, AutoAttack within its budget, the MILP's
    counterexamples); "unknown" is the gap (0: the exact robust accuracy); the clean drop is against
    the standard run of the same seed, with the paper's 5-point test on its 95% interval
    (:func:`harness.report.clean_drop.within_limit`). ``tests/test_readme.py`` checks that the
    README shows exactly this table for the committed results.
    """
    steps = {profile.certify_for(s).pgd_steps for s in profile.settings}
    pgd = f"PGD-{steps.pop()}" if len(steps) == 1 else "PGD"  # settings may set their own steps
    head = ["dataset", "eps", "method", "clean", pgd, "IBP + CROWN-IBP",
            "robust accuracy (certified to not broken)", "unknown", f"clean drop [95% CI], within {LIMIT:g}?"]
    variant = agg["variant"].astype(object).fillna("") if "variant" in agg else ""
    mine = agg[(agg["profile"] == profile.name) & (variant == "")]

    def pm(r, c: str) -> str:
        return f"{r[f'{c}_mean']:.2f} ± {r[f'{c}_std']:.2f}" if not math.isnan(r[f"{c}_mean"]) else ""

    rows = []
    for s in profile.settings:
        for method in s.methods:
            row = mine[(mine["dataset"] == s.dataset) & (mine["eps_label"].astype(str) == s.eps_label)
                       & (mine["method"] == method)]
            if row.empty:
                continue
            r = row.iloc[0]
            robust = pm(r, "robust_lower")
            if r["unknown_mean"] > 0:
                robust = f"{r['robust_lower_mean']:.2f} to {r['robust_upper_mean']:.2f}"
            drop = "" if method == "standard" else (
                f"{r['clean_drop_mean']:+.2f} [{r['clean_drop_ci_low']:+.2f}, {r['clean_drop_ci_high']:+.2f}], "
                f"{within_limit(r['clean_drop_mean'], r['clean_drop_ci_low'], r['clean_drop_ci_high'])}")
            rows.append([s.dataset, s.eps_label, method, pm(r, "clean_acc"), pm(r, "pgd_acc"),
                         pm(r, col("crown-ibp")), robust, f"{r['unknown_mean']:.2f}", drop])
    return markdown_table(pd.DataFrame(rows, columns=head))
