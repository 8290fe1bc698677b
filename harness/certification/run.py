"""Certify a finished run: one record per test sample, checked invariants, timings.

Writes ``runs/<id>/certify-<key>.csv`` (per-sample records) and ``runs/<id>/certify-<key>.json``
(settings, per-stage wall time, what each budgeted stage covered, batch sizes, peak memory, the complete
verifier's counts), ``<key>`` being a hash of the certification settings, so a run that several
profiles share keeps one certification per profile's settings. The stages are :mod:`harness.certification.cascade`'s:

    clean -> PGD -> IBP (own, and auto_LiRPA's beside it) -> CROWN-IBP -> CROWN -> alpha-CROWN
          -> AutoAttack -> complete verification (MILP) -> AutoAttack on certified samples (alarm)

Verdict columns are *cumulative* along the cascade: ``cert_crown`` means "certified by CROWN or by a
cheaper method before it", which is what a verification pipeline reports, and lets the expensive
stages run only on the samples the cheaper ones left undecided (correctly classified, not broken by
an attack, not yet certified). The own IBP and auto_LiRPA's IBP both run on every sample and must
agree.

An expensive stage has a *budget*: the number of undecided samples it may process, taken in index
order. When the budget does not run out, the stage covers the whole test set; when it does, the
stage's column covers the prefix of the test set up to its last processed sample (``n_<stage>`` in
``certify-<key>.json`` and in the tables) and is empty beyond it. Budgets are counts, not seconds, so that
the same settings give the same records on any machine (the complete verifier's per-sample
wall-clock cap is the one exception; ``certify-<key>.json`` counts the samples that hit it).

Every random draw (PGD's and AutoAttack's starts) comes from generators seeded by the run id and the
stage (per sample for PGD: :mod:`harness.runtime.randomness`), so a re-run or a resumed certification writes
byte-identical records, whatever the process did before. Certification runs in IEEE float32 /
float64 arithmetic only (:func:`harness.runtime.device.exact_arithmetic`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness.bounds import certify as certify_batch
from harness.certification.cascade import CERTIFIERS, SIDE_CERTIFIERS, Cascade, InvariantError, budgeted, col, covered_key, margin_col  # noqa: F401
from harness.config.settings import CertifySettings
from harness.rundir import RunDir, atomic_write_text, write_json
from harness.runtime.device import device_name, exact_arithmetic, peak_memory_gib, reset_peak_memory, resolve_device

__all__ = ["CERTIFIERS", "InvariantError", "budgeted", "certify_paths", "certify_run", "check_invariants", "col",
           "covered_key", "gap_col", "is_certified", "margin_col", "summarize"]


def _broken(df: pd.DataFrame) -> pd.Series:
    """Samples a confirmed attack point (PGD, AutoAttack) or a counterexample of the MILP breaks."""
    out = ~df["pgd_robust"].astype(bool)
    if "aa_robust" in df:
        out |= df["aa_robust"] == 0
    if "complete" in df:
        out |= df["complete"].astype(str) == "counterexample"
    return out


def check_invariants(df: pd.DataFrame, where: str = "") -> None:
    """Fatal checks on per-sample records (see module docstring)."""
    correct = df["clean_pred"] == df["label"]
    broken = _broken(df)
    for c in CERTIFIERS + SIDE_CERTIFIERS:
        name = col(c)
        if name not in df or df[name].isna().all():
            continue
        cert = df[name] == 1  # NaN (not run) is not certified
        bad = df.index[cert & ~correct]
        if len(bad):
            raise InvariantError(f"{where}: {c} certifies misclassified sample(s) {list(df.loc[bad, 'index'][:5])}")
        bad = df.index[cert & broken]
        if len(bad):
            raise InvariantError(f"{where}: {c} certifies sample(s) {list(df.loc[bad, 'index'][:5])} that an attack "
                                 f"or a counterexample breaks: a bound or the attack is wrong")
    both = df[col("ibp")].notna() & df[col("lirpa-ibp")].notna()
    diff = df.index[both & (df[col("ibp")].astype(bool) != df[col("lirpa-ibp")].astype(bool))]
    if len(diff):
        raise InvariantError(f"{where}: own IBP and auto_LiRPA IBP disagree on sample(s) "
                             f"{list(df.loc[diff, 'index'][:5])}")
    clean = correct.mean()
    pgd = df["pgd_robust"].astype(bool).mean()
    if not pgd <= clean:
        raise InvariantError(f"{where}: PGD accuracy {pgd} exceeds clean accuracy {clean}")


def certify_run(run: RunDir, settings: CertifySettings, *, device: str = "auto", log=print,
                force: bool = False) -> pd.DataFrame:
    """Evaluate a finished run's model on the test set; skip when records with the same settings exist."""
    out_csv, out_json = certify_paths(run, settings)
    if not run.finished:
        raise RuntimeError(f"run {run.path.name} is not finished; train it first")
    if not force and is_certified(run, settings):
        return pd.read_csv(out_csv)
    dev = resolve_device(device)
    reset_peak_memory(dev)
    with exact_arithmetic(dev):
        c = Cascade(run, settings, dev, log)
        if force:
            c.drop_partial()
        c.run_all()
        df = c.records()
        check_invariants(df, where=f"run {run.path.name}")
        sweep = eps_sweep(c)
    atomic_write_text(out_csv, df.to_csv(index=False))
    meta = {"run_id": run.path.name, "settings": settings.to_dict(), "eps": c.eps, "n_test": c.n,
            "device": str(dev), "device_name": device_name(dev), "times_s": c.times, "eps_sweep": sweep,
            **c.covered, "batch_sizes": c.batches.used, "peak_memory_gib": peak_memory_gib(dev), **_counts(c)}
    write_json(out_json, meta)
    c.drop_partial()
    return df


def _counts(c: Cascade) -> dict:
    stats = c.stats.get("complete", {"wall_clock_limited": 0, "seconds": []})
    code = c.rows.get("complete_code", np.zeros(c.n, dtype=np.int64))
    seconds = stats["seconds"]
    return {"complete_counts": {"verified": int((code == 1).sum()), "counterexample": int((code == 2).sum()),
                                "unknown": int((code == 3).sum()), "wall_clock_limited": stats["wall_clock_limited"],
                                "too_many_unstable": stats.get("too_many_unstable", 0),
                                "median_unstable": float(np.median(stats["unstable"])) if stats.get("unstable") else None,
                                "median_s": float(np.median(seconds)) if seconds else None,
                                "max_s": max(seconds) if seconds else None},
            "alarm_samples": c.stats.get("alarm_samples", 0)}


def eps_sweep(c: Cascade) -> list[dict]:
    """Own-IBP certified accuracy of the model at fractions of its eps (the certified-vs-eps curve)."""
    import time


    sweep = []
    m = min(c.settings.n_sweep, c.n)
    for frac in c.settings.eps_sweep:
        t0 = time.perf_counter()
        cert = np.zeros(m, dtype=bool)

        def fn(j, frac=frac):
            xb, yb = c.on_device(j)
            cert[j] = certify_batch(c.model, xb, yb, c.eps * frac, "ibp").certified.cpu().numpy()
        c.batches.run(("eps-sweep",) + c.arch_key, np.arange(m), c.settings.batch_size, fn)
        sweep.append({"eps": c.eps * frac, "fraction": frac, "n": m, "cert_ibp": 100 * int(cert.sum()) / max(m, 1),
                      "time_s": time.perf_counter() - t0})
    return sweep


def certify_paths(run: RunDir, settings: CertifySettings) -> tuple[Path, Path]:
    """(records, metadata) of the run's certification with ``settings``."""
    return run.path / f"certify-{settings.key}.csv", run.path / f"certify-{settings.key}.json"


def is_certified(run: RunDir, settings: CertifySettings) -> bool:
    """Whether the run has certification records made with exactly these settings."""
    out_csv, out_json = certify_paths(run, settings)
    if not (out_json.exists() and out_csv.exists()):
        return False
    return json.loads(out_json.read_text()).get("settings") == settings.to_dict()


def _final_prefix(df: pd.DataFrame) -> pd.Series:
    """The samples the deepest stage that ran covered (its non-empty cells): where robustness is bounded."""
    for c in ("complete", "alpha-crown", "crown"):
        if col(c) in df and df[col(c)].notna().any():
            return df[col(c)].notna()
    return pd.Series(True, index=df.index)


def summarize(df: pd.DataFrame) -> dict[str, float]:
    """Accuracies in percent; a certifier not run gives NaN, never 0.

    A budgeted stage's own accuracy is over the prefix it covered (its non-empty cells). ``robust_lower``
    (certified by any stage) and ``robust_upper`` (correct and broken by no attack and no counterexample)
    bound the true robust accuracy on the whole test set: a sample past a budget counts with what the
    cheaper stages said of it. ``unknown`` is their gap (0: the exact robust accuracy).
    """
    out = {"n_test": len(df), "clean_acc": 100 * float((df["clean_pred"] == df["label"]).mean()),
           "pgd_acc": 100 * float(df["pgd_robust"].astype(bool).mean())}
    certified = pd.Series(False, index=df.index)
    for c in CERTIFIERS:
        v = df[col(c)].dropna() if col(c) in df else pd.Series(dtype=float)
        out[col(c)] = 100 * float(v.astype(bool).mean()) if len(v) else float("nan")
        if col(c) in df:
            certified |= df[col(c)] == 1
    aa = df["aa_robust"].dropna() if "aa_robust" in df else pd.Series(dtype=float)
    out["aa_acc"] = 100 * float(aa.astype(bool).mean()) if len(aa) else float("nan")
    correct = df["clean_pred"] == df["label"]
    lower = float((certified & correct).mean())
    upper = float((~_broken(df) & correct).mean())
    verdicts = df["complete"].astype(str) if "complete" in df else pd.Series("", index=df.index)
    out.update({"robust_lower": 100 * lower, "robust_upper": 100 * upper, "unknown": 100 * (upper - lower),
                "counterexamples": int((verdicts == "counterexample").sum()),
                "complete_unknown": int((verdicts == "unknown").sum())})
    return out


#: The stages of the gap figure: after each, the best certificate and the best attack so far.
GAP_STAGES = ("ibp", "crown-ibp", "crown", "alpha-crown", "autoattack", "complete")


def gap_col(stage: str) -> str:
    """The summary column of :func:`stage_gaps`' value after ``stage``, e.g. ``gap_crown_ibp``."""
    return "gap_" + stage.replace("-", "_")


def stage_gaps(df: pd.DataFrame) -> dict[str, float]:
    """Percentage points between the best attack's and the best certificate's robust accuracy after
    each stage, on the deepest stage's prefix (so every stage is measured on the same samples).

    How much each certifier (and AutoAttack, and the MILP's counterexamples) closes the gap between the
    upper bound of an attack and the lower bound of a certificate; 0 after the last stage: exact.
    """
    prefix = _final_prefix(df)
    d = df[prefix]
    correct = d["clean_pred"] == d["label"]
    upper = correct & d["pgd_robust"].astype(bool)
    certified = pd.Series(False, index=d.index)
    out = {}
    for stage in GAP_STAGES:
        if stage == "autoattack":
            if "aa_robust" in d and d["aa_robust"].notna().all():
                upper = upper & (d["aa_robust"] == 1)
        elif stage == "complete":
            if "complete" in d:
                upper = upper & (d["complete"].astype(str) != "counterexample")
            if col(stage) in d and d[col(stage)].notna().all():
                certified = certified | (d[col(stage)] == 1)
        elif col(stage) in d and d[col(stage)].notna().all():
            certified = certified | (d[col(stage)] == 1)
        out[stage] = 100 * float((upper & ~certified).mean())
    return out
