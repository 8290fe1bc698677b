"""Certify a finished run: one record per test sample, checked invariants, timings.

Writes ``runs/<id>/certify.csv`` (per-sample records) and ``runs/<id>/certify.json`` (settings,
counts, per-certifier wall time). Verdict columns are *cumulative* along the cascade
ibp -> crown-ibp -> crown -> alpha-crown: ``cert_crown`` means "certified by CROWN or by a cheaper
method before it", which is what a verification pipeline reports, and lets the expensive
certifiers run only on samples the cheaper ones left undecided (a certified sample stays
certified). The own IBP and auto_LiRPA's IBP both run on every sample and must agree.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness.attacks import pgd_robust
from harness.bounds import certify as certify_batch
from harness.train import RunDir, atomic_write_text, load_model, resolve_device, write_json

# Column names of the per-sample records (one place).
CERTIFIERS = ("ibp", "lirpa-ibp", "crown-ibp", "crown", "alpha-crown")


def col(certifier: str) -> str:
    """Verdict column of a certifier, e.g. ``cert_crown_ibp``."""
    return "cert_" + certifier.replace("-", "_")


def margin_col(certifier: str) -> str:
    return "margin_" + certifier.replace("-", "_")


class InvariantError(AssertionError):
    """A property every sound evaluation must have does not hold: a bug in a bound or an attack."""


@dataclass(frozen=True)
class CertifySettings:
    """How a run is evaluated (part of a profile)."""

    n_test: int = 10000          # test prefix for clean / PGD / IBP / CROWN-IBP
    n_crown: int = 0             # prefix for CROWN (undecided samples only)
    n_alpha_crown: int = 0       # prefix for alpha-CROWN (undecided samples only)
    pgd_steps: int = 50
    pgd_restarts: int = 2
    batch_size: int = 500
    crown_batch_size: int = 32
    alpha_iterations: int = 20
    alpha_lr: float = 0.1
    eps_sweep: tuple[float, ...] = ()   # fractions of eps for the certified-vs-eps curve (own IBP)
    n_sweep: int = 1000

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CertifySettings":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown [certify] key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        d = dict(d)
        if "eps_sweep" in d:
            d["eps_sweep"] = tuple(d["eps_sweep"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eps_sweep"] = list(self.eps_sweep)
        return d


def check_invariants(df: pd.DataFrame, where: str = "") -> None:
    """Fatal checks on per-sample records (see module docstring)."""
    correct = df["clean_pred"] == df["label"]
    for c in CERTIFIERS:
        name = col(c)
        if name not in df or df[name].isna().all():
            continue
        cert = df[name] == 1  # NaN (not run) is not certified
        bad = df.index[cert & ~correct]
        if len(bad):
            raise InvariantError(f"{where}: {c} certifies misclassified sample(s) {list(df.loc[bad, 'index'][:5])}")
        bad = df.index[cert & ~df["pgd_robust"].astype(bool)]
        if len(bad):
            raise InvariantError(f"{where}: {c} certifies sample(s) {list(df.loc[bad, 'index'][:5])} that PGD "
                                 f"breaks: a bound or the attack is wrong")
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
    from harness.data import load_split

    out_csv, out_json = run.path / "certify.csv", run.path / "certify.json"
    if not run.finished:
        raise RuntimeError(f"run {run.path.name} is not finished; train it first")
    if not force and out_csv.exists() and out_json.exists():
        meta = json.loads(out_json.read_text())
        if meta.get("settings") == settings.to_dict():
            return pd.read_csv(out_csv)
    cfg = run.read_config()
    dev = resolve_device(device)
    model = load_model(run, dev)
    x_all, y_all = load_split(cfg.dataset, "test")
    n = min(settings.n_test, len(x_all))
    x_all, y_all = x_all[:n], y_all[:n]
    eps = cfg.eps
    times: dict[str, float] = {}
    rows: dict[str, np.ndarray] = {"index": np.arange(n), "label": y_all.numpy()}
    bs = settings.batch_size

    def batches(idx: np.ndarray, size: int):
        for i in range(0, len(idx), size):
            j = idx[i:i + size]
            yield j, x_all[j].to(dev), y_all[j].to(dev)

    all_idx = np.arange(n)
    t = time.perf_counter()
    pred = np.empty(n, dtype=np.int64)
    with torch.no_grad():
        for j, xb, _ in batches(all_idx, bs):
            pred[j] = model(xb).argmax(1).cpu().numpy()
    times["clean"] = time.perf_counter() - t
    rows["clean_pred"] = pred
    correct = pred == rows["label"]

    # The attack runs on every correctly classified sample (a misclassified one is never robust),
    # certified ones included, so that "certified but broken" can be caught.
    t = time.perf_counter()
    robust = np.zeros(n, dtype=bool)
    for j, xb, yb in batches(all_idx[correct], bs):
        robust[j] = pgd_robust(model, xb, yb, eps, steps=settings.pgd_steps,
                               restarts=settings.pgd_restarts).cpu().numpy()
    times["pgd"] = time.perf_counter() - t
    rows["pgd_robust"] = robust

    def run_certifier(name: str, idx: np.ndarray, size: int) -> None:
        verdict = np.full(n, np.nan)
        margin = np.full(n, np.nan)
        t0 = time.perf_counter()
        for j, xb, yb in batches(idx, size):
            v = certify_batch(model, xb, yb, eps, name, batch_size=size,
                              alpha_iterations=settings.alpha_iterations, alpha_lr=settings.alpha_lr)
            verdict[j] = v.certified.cpu().numpy()
            margin[j] = v.min_margin.cpu().numpy()
        times[name] = time.perf_counter() - t0
        rows[col(name)] = verdict
        rows[margin_col(name)] = margin

    for name in ("ibp", "lirpa-ibp", "crown-ibp"):
        run_certifier(name, all_idx, bs)
    # cumulative cascade: crown-ibp's column includes IBP's verdicts
    cum = np.logical_or(rows[col("ibp")] == 1, rows[col("crown-ibp")] == 1)
    rows[col("crown-ibp")] = cum.astype(float)
    for name, n_prefix, size in (("crown", settings.n_crown, settings.crown_batch_size),
                                 ("alpha-crown", settings.n_alpha_crown, settings.crown_batch_size)):
        n_prefix = min(n_prefix, n)
        if n_prefix <= 0:
            rows[col(name)] = np.full(n, np.nan)
            rows[margin_col(name)] = np.full(n, np.nan)
            continue
        prefix = np.arange(n_prefix)
        undecided = prefix[correct[:n_prefix] & robust[:n_prefix] & ~cum[:n_prefix]]
        run_certifier(name, undecided, size)
        verdict = np.full(n, np.nan)
        verdict[:n_prefix] = cum[:n_prefix] | (rows[col(name)][:n_prefix] == 1)
        rows[col(name)] = verdict
        cum = np.where(np.isnan(verdict), cum, verdict == 1)
        log(f"  {name}: {len(undecided)} undecided of the first {n_prefix}, {times[name]:.1f}s")

    df = pd.DataFrame(rows)
    check_invariants(df, where=f"run {run.path.name}")

    sweep = []
    for frac in settings.eps_sweep:
        m = min(settings.n_sweep, n)
        t0 = time.perf_counter()
        cert = 0
        for j, xb, yb in batches(np.arange(m), bs):
            cert += int(certify_batch(model, xb, yb, eps * frac, "ibp").certified.sum())
        sweep.append({"eps": eps * frac, "fraction": frac, "n": m, "cert_ibp": 100 * cert / max(m, 1),
                      "time_s": time.perf_counter() - t0})

    atomic_write_text(out_csv, df.to_csv(index=False))
    meta = {"run_id": run.path.name, "settings": settings.to_dict(), "eps": eps, "n_test": n,
            "device": str(dev), "times_s": times, "eps_sweep": sweep,
            "n_crown": int(min(settings.n_crown, n)), "n_alpha_crown": int(min(settings.n_alpha_crown, n))}
    write_json(out_json, meta)
    return df


def summarize(df: pd.DataFrame) -> dict[str, float]:
    """Accuracies in percent; a certifier not run gives NaN, never 0."""
    out = {"n_test": len(df), "clean_acc": 100 * float((df["clean_pred"] == df["label"]).mean()),
           "pgd_acc": 100 * float(df["pgd_robust"].astype(bool).mean())}
    for c in CERTIFIERS:
        v = df[col(c)].dropna()
        out[col(c)] = 100 * float(v.astype(bool).mean()) if len(v) else float("nan")
    return out

