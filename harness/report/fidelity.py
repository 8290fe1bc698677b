"""Published numbers beside ours: the comparison table of a profile that certifies published checkpoints.

For every run of a profile that loads a published checkpoint (a setting with ``checkpoint = "<name>"``),
``results/<profile>/comparison.csv`` (+ ``.md``) holds one row per number the checkpoint's description
(``benchmarks/checkpoints/<name>.toml``, ``[[published]]``) gives, with ours beside it: ours in percent
and as a count of test images, the difference, the tolerance (or the target range) and whether ours is
within it. Rows follow for what ours adds (IBP's, CROWN-IBP's, CROWN's and alpha-CROWN's robust-error
bounds, cumulative along the cascade as its verdict columns are; the MILP's verdict counts), with no
published value. Built from stored records only, like every table.

``results/<profile>/samples.csv`` (+ ``.md``) sets the verdicts published for single test images
(``[[published_samples]]``) beside ours for the same images, and the stage that decided ours.

The measures (``measure`` in the description):

- ``clean_error``: misclassified test images;
- ``pgd_error``: misclassified at the clean point or at a point PGD found (confirmed in the threat model);
- ``lp_dual_error``: not certified by the LP dual (``cert_lp_dual``; a misclassified image is never certified);
- ``exact_error``: 100 - the cascade's certified accuracy (every certifier and the MILP), the exact robust
  error when no sample is left unknown (the row says how many are); a row with unknown samples is never
  "within".
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from harness.certification.records import check_invariants, col, sample_verdict, summarize
from harness.certification.run import certify_paths
from harness.config.checkpoints import load_checkpoint_spec
from harness.config.profile import Profile
from harness.config.settings import REPO, RUNS
from harness.report.markdown import markdown_table
from harness.rundir import RunDir, atomic_write_text

RESULTS = REPO / "results"  # as harness.report.tables

__all__ = ["COLUMNS", "SAMPLE_COLUMNS", "build_comparison", "comparison_rows", "measures", "sample_rows"]

COLUMNS = ["checkpoint", "eps", "quantity", "published_pct", "ours_pct", "ours_count", "n_test", "difference_pp",
           "tolerance", "within", "unknown", "source"]
SAMPLE_COLUMNS = ["checkpoint", "eps", "index", "label", "published", "ours", "decided_by", "agree", "note", "source"]


def measures(df: pd.DataFrame) -> dict[str, tuple[float, int, int]]:
    """{measure: (percent, count of images, unknown samples)} from one run's per-sample records."""
    n = len(df)
    correct = (df["clean_pred"] == df["label"]).to_numpy()
    s = summarize(df)
    out = {"clean_error": int((~correct).sum()), "pgd_error": int((~df["pgd_robust"].astype(bool)).sum())}
    if col("lp-dual") in df and df[col("lp-dual")].notna().all():
        out["lp_dual_error"] = int((~((df[col("lp-dual")] == 1).to_numpy() & correct)).sum())
    certified = np.zeros(n, dtype=bool)
    for c in ("ibp", "crown-ibp", "crown", "alpha-crown", "complete"):
        if col(c) in df and df[col(c)].notna().all():
            certified |= (df[col(c)] == 1).to_numpy()
            out[f"{c}_error"] = int((~(certified & correct)).sum())
    unknown = int(round(s["unknown"] * n / 100))
    res = {k: (100.0 * v / n, v, 0) for k, v in out.items()}
    res["exact_error"] = (100.0 - s["robust_lower"], int(round((100.0 - s["robust_lower"]) * n / 100)), unknown)
    return res


def _within(value: float, p) -> tuple[str, bool]:
    if p.lower_pct is not None or p.upper_pct is not None:
        lo = -math.inf if p.lower_pct is None else p.lower_pct
        hi = math.inf if p.upper_pct is None else p.upper_pct
        return f"[{lo:g}, {hi:g}]", lo - 1e-9 <= value <= hi + 1e-9
    return f"± {p.tolerance_pct:g}", abs(value - p.value_pct) <= p.tolerance_pct + 1e-9


ADDED = (("ibp_error", "IBP robust-error bound (input clipped to [0, 1])"),
         ("crown-ibp_error", "CROWN-IBP bound (cumulative: IBP or CROWN-IBP)"),
         ("crown_error", "CROWN bound (input clipped, adaptive slopes; cumulative)"),
         ("alpha-crown_error", "alpha-CROWN bound (cumulative)"),
         ("complete_error", "after the MILP (cumulative: the certified part of the exact error)"))


def _published_runs(profile: Profile, runs_root: Path | None):
    """(run config, checkpoint description, records, certify metadata) of every published-checkpoint run
    of ``profile`` that has records."""
    for p in profile.plan():
        cfg = p.cfg
        if cfg.checkpoint is None:
            continue
        run = RunDir.of(cfg, runs_root or RUNS)
        csv_path, meta_path = certify_paths(run, profile.certify_for(p))
        if not (csv_path.exists() and meta_path.exists()):
            continue
        df = pd.read_csv(csv_path)
        check_invariants(df, where=f"run {cfg.run_id}")
        yield cfg, load_checkpoint_spec(cfg.checkpoint), df, json.loads(meta_path.read_text())


def sample_rows(profile: Profile, runs_root: Path | None = None) -> list[dict]:
    """One row per published single-image verdict of every published-checkpoint run with records."""
    rows = []
    for cfg, spec, df, _ in _published_runs(profile, runs_root):
        for pub in spec.published_samples:
            base = {"checkpoint": spec.name, "eps": cfg.eps, "index": pub.index, "published": pub.verdict,
                    "note": pub.note, "source": pub.source}
            if pub.index >= len(df):
                rows.append({**base, "ours": "not measured", "agree": "not measured"})
                continue
            row = df.iloc[pub.index]
            ours, stage = sample_verdict(row)
            rows.append({**base, "label": int(row["label"]), "ours": ours, "decided_by": stage,
                         "agree": "yes" if ours == pub.verdict else ("undecided" if ours == "unknown" else "no")})
    return rows


def comparison_rows(profile: Profile, runs_root: Path | None = None) -> list[dict]:
    """The comparison rows of every published-checkpoint run of ``profile`` that has records."""
    rows = []
    for cfg, spec, df, meta in _published_runs(profile, runs_root):
        got = measures(df)
        n = len(df)
        base = {"checkpoint": spec.name, "eps": cfg.eps, "n_test": n}
        for pub in spec.published:
            if pub.measure not in got:
                rows.append({**base, "quantity": pub.quantity, "published_pct": pub.value_pct,
                             "source": pub.source, "within": "not measured"})
                continue
            pct, count, unknown = got[pub.measure]
            tol, ok = _within(pct, pub)
            ok = ok and unknown == 0
            rows.append({**base, "quantity": pub.quantity, "published_pct": pub.value_pct, "ours_pct": pct,
                         "ours_count": count, "difference_pp": pct - pub.value_pct, "tolerance": tol,
                         "within": "yes" if ok else "no", "unknown": unknown, "source": pub.source})
        for key, label in ADDED:
            if key in got:
                pct, count, _ = got[key]
                rows.append({**base, "quantity": label, "ours_pct": pct, "ours_count": count,
                             "source": "ours (not published)"})
        if not meta.get("settings", {}).get("complete_samples", 0):
            continue  # no MILP in this run's certification: no row of its verdicts
        counts = meta.get("complete_counts", {})
        rows.append({**base, "quantity": "MILP verdicts: verified / counterexample / unknown",
                     "ours_count": counts.get("verified", 0) + counts.get("counterexample", 0),
                     "source": f"ours: {counts.get('verified', 0)} / {counts.get('counterexample', 0)} / "
                               f"{counts.get('unknown', 0)}; {round(sum(meta.get('times_s', {}).values()))} s "
                               f"of certification"})
    return rows


def build_comparison(profile: Profile, runs_root: Path | None = None, results_dir: Path | None = None,
                     log=print, write_empty: bool = True) -> pd.DataFrame | None:
    """Write ``<results_dir>/<profile>/comparison.csv`` (+ .md) if the profile certifies published checkpoints
    (and, unless ``write_empty``, only if some of its runs have records)."""
    if not any(s.run.get("checkpoint") for s in profile.settings):
        return None
    df = pd.DataFrame(comparison_rows(profile, runs_root), columns=COLUMNS)
    if df.empty and not write_empty:
        return None
    folder = (results_dir or RESULTS) / profile.name
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "comparison.csv", df.to_csv(index=False))
    atomic_write_text(folder / "comparison.md", markdown_table(df))
    samples = pd.DataFrame(sample_rows(profile, runs_root), columns=SAMPLE_COLUMNS)
    if not samples.empty:
        atomic_write_text(folder / "samples.csv", samples.to_csv(index=False))
        atomic_write_text(folder / "samples.md", markdown_table(samples))
    log(f"wrote comparison.csv (+ .md){' and samples.csv (+ .md)' if not samples.empty else ''} to {folder}")
    return df
