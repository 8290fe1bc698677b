"""The record schema of a certification: its column names, the certified / broken rules, the invariants
every sound evaluation satisfies, and the summaries computed from the records.

One per-sample row per test image (``runs/<id>/certify-<key>.csv``): ``index``, ``label``,
``clean_pred``, ``pgd_robust``, one cumulative verdict column per certifier (:func:`col`, NaN beyond the
prefix a budgeted stage covered) with its margin lower bound (:func:`margin_col`), ``aa_robust`` and the
MILP's verdict ``complete``. The cascade (:mod:`harness.certification.cascade`) decides with the same
rules on its in-memory rows that the tables apply to the stored ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: The verdict columns of the cascade's certifiers, cheapest first (auto_LiRPA's IBP runs beside the own).
CERTIFIERS = ("ibp", "lirpa-ibp", "crown-ibp", "crown", "alpha-crown", "complete")
#: Certifiers run beside the cascade on every sample when the settings ask for them: own verdict and margin
#: columns, never cumulative, never a certificate of the cascade (``lp-dual``: CertifySettings.lp_dual).
SIDE_CERTIFIERS = ("lp-dual",)

#: The complete verifier's verdicts as stored (0: not run on this sample).
COMPLETE_VERDICTS = ("", "verified", "counterexample", "unknown")


def col(certifier: str) -> str:
    """Verdict column of a certifier, e.g. ``cert_crown_ibp``."""
    return "cert_" + certifier.replace("-", "_")


def margin_col(certifier: str) -> str:
    return "margin_" + certifier.replace("-", "_")


def covered_key(stage: str) -> str:
    """The ``certify-<key>.json`` / table key of the prefix a budgeted stage covered, e.g. ``n_alpha_crown``."""
    return "n_" + stage.replace("-", "_")


class InvariantError(AssertionError):
    """A property every sound evaluation must have does not hold: a bug in a bound or an attack."""


def broken_rule(pgd_robust: np.ndarray, aa_broken: np.ndarray | None = None,
                counterexample: np.ndarray | None = None) -> np.ndarray:
    """The one rule for a *broken* sample: misclassified or not robust to PGD (``pgd_robust`` is False
    for both), or broken by AutoAttack, or a counterexample of the MILP. Every break is a point inside
    the threat model that a plain forward pass misclassifies (:mod:`harness.attacks.confirm`)."""
    out = ~np.asarray(pgd_robust).astype(bool)
    if aa_broken is not None:
        out = out | np.asarray(aa_broken).astype(bool)
    if counterexample is not None:
        out = out | np.asarray(counterexample).astype(bool)
    return out


def certified_rule(verdicts: list[np.ndarray]) -> np.ndarray:
    """The one rule for a *certified* sample: any certifier (incomplete or the MILP) proved every margin
    positive. ``verdicts``: one array per certifier, 1 where it certified (NaN or 0 elsewhere)."""
    out = np.zeros(len(verdicts[0]) if verdicts else 0, dtype=bool)
    for v in verdicts:
        out = out | (np.asarray(v) == 1)
    return out


def _broken(df: pd.DataFrame) -> pd.Series:
    """:func:`broken_rule` on stored records (``aa_robust`` 0 = broken; ``complete`` "counterexample")."""
    aa = (df["aa_robust"] == 0).to_numpy() if "aa_robust" in df else None
    cx = (df["complete"].astype(str) == "counterexample").to_numpy() if "complete" in df else None
    return pd.Series(broken_rule(df["pgd_robust"].to_numpy(), aa, cx), index=df.index)


def undecided(df: pd.DataFrame) -> np.ndarray:
    """Per stored row: correctly classified, broken by no attack and certified by no stage (the samples
    ``summarize``'s ``unknown`` counts; past a budgeted stage's prefix, what the cheaper stages left)."""
    correct = (df["clean_pred"] == df["label"]).to_numpy()
    certified = certified_rule([df[col(c)].to_numpy() for c in CERTIFIERS if col(c) in df])
    if not len(certified):
        certified = np.zeros(len(df), dtype=bool)
    return correct & ~_broken(df).to_numpy() & ~certified


def sample_verdict(row: pd.Series) -> tuple[str, str]:
    """(verdict, the stage that decided it) of one stored row: ``misclassified``; ``not robust`` (PGD,
    AutoAttack or the MILP's counterexample); ``robust`` (the cheapest certifier whose cumulative column
    says so); else ``unknown``. The same rules as :func:`undecided` and :func:`summarize`."""
    if row["clean_pred"] != row["label"]:
        return "misclassified", "clean"
    frame = row.to_frame().T
    if _broken(frame).iloc[0]:
        if not bool(row["pgd_robust"]):
            return "not robust", "pgd"
        return "not robust", "complete" if str(row.get("complete", "")) == "counterexample" else "autoattack"
    for c in CERTIFIERS:
        if c != "lirpa-ibp" and col(c) in row and row[col(c)] == 1:
            return "robust", c
    return "unknown", ""


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
    for c in CERTIFIERS:
        v = df[col(c)].dropna() if col(c) in df else pd.Series(dtype=float)
        out[col(c)] = 100 * float(v.astype(bool).mean()) if len(v) else float("nan")
    certified = certified_rule([df[col(c)].to_numpy() for c in CERTIFIERS if col(c) in df])
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
