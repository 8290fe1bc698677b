"""Certify a finished run: one record per test sample, checked invariants, timings.

Writes ``runs/<id>/certify.csv`` (per-sample records) and ``runs/<id>/certify.json`` (settings,
per-stage wall time, what each stage covered, batch sizes, peak memory). The stages run in order:

    clean -> PGD -> IBP (own) + IBP (auto_LiRPA) -> CROWN-IBP -> CROWN -> alpha-CROWN

Verdict columns are *cumulative* along the cascade: ``cert_crown`` means "certified by CROWN or by a
cheaper method before it", which is what a verification pipeline reports, and lets the expensive
certifiers run only on the samples the cheaper ones left undecided (correctly classified, not broken
by an attack, not yet certified). The own IBP and auto_LiRPA's IBP both run on every sample and must
agree.

An expensive stage has a *budget*: the number of undecided samples it may process, taken in index
order. When the budget does not run out, the stage covers the whole test set; when it does, the
stage's column covers the prefix of the test set up to its last processed sample (``n_<stage>`` in
``certify.json`` and in the tables) and is empty beyond it. Budgets are counts, not seconds, so that
the same settings give the same records on any machine.

Every random draw (PGD's starts) comes from generators seeded by the run id and the stage, per sample
(:mod:`harness.randomness`), so a re-run or a resumed certification writes byte-identical records,
whatever the process did before and however the batches were split after an out-of-memory error
(:mod:`harness.batching`). Certification runs in IEEE float32 / float64 arithmetic only
(:func:`harness.device.exact_arithmetic`).
"""

from __future__ import annotations

import json
import time
from typing import Callable

import numpy as np
import pandas as pd
import torch

from harness.attacks import pgd_robust
from harness.batching import AdaptiveBatches
from harness.bounds import certify as certify_batch
from harness.config import CertifySettings
from harness.device import device_name, exact_arithmetic, peak_memory_gib, reset_peak_memory, resolve_device
from harness.randomness import SampleNoise, derived_seed
from harness.rundir import RunDir, atomic_write_text, load_model, write_json

# Column names of the per-sample records (one place).
CERTIFIERS = ("ibp", "lirpa-ibp", "crown-ibp", "crown", "alpha-crown")
#: Stages that run on undecided samples only, within a budget (CertifySettings.<stage>_samples).
BUDGETED = ("crown", "alpha-crown")


def col(certifier: str) -> str:
    """Verdict column of a certifier, e.g. ``cert_crown_ibp``."""
    return "cert_" + certifier.replace("-", "_")


def margin_col(certifier: str) -> str:
    return "margin_" + certifier.replace("-", "_")


def covered_key(stage: str) -> str:
    """The ``certify.json`` / table key of the prefix a budgeted stage covered, e.g. ``n_alpha_crown``."""
    return "n_" + stage.replace("-", "_")


class InvariantError(AssertionError):
    """A property every sound evaluation must have does not hold: a bug in a bound or an attack."""


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


def budgeted(undecided: np.ndarray, budget: int, n: int) -> tuple[np.ndarray, int]:
    """(the undecided indices a stage processes, the length of the test-set prefix it then covers)."""
    if budget <= 0:
        return undecided[:0], 0
    if budget >= len(undecided):
        return undecided, n
    chosen = undecided[:budget]
    return chosen, int(chosen[-1]) + 1


class _Certification:
    """The state of one run's certification: the model, the test data, the records so far."""

    def __init__(self, run: RunDir, settings: CertifySettings, device: torch.device, log: Callable[[str], None]):
        from harness.data import load_split

        self.run, self.settings, self.device, self.log = run, settings, device, log
        self.cfg = run.read_config()
        self.model = load_model(run, device)
        x, y = load_split(self.cfg.dataset, "test")
        self.n = n = min(settings.n_test, len(x))
        self.x, self.y = x[:n], y[:n]
        self.eps = self.cfg.eps
        self.rows: dict[str, np.ndarray] = {"index": np.arange(n), "label": self.y.numpy()}
        self.times: dict[str, float] = {}
        self.covered: dict[str, int] = {}
        self.batches = AdaptiveBatches(device, log)
        self.arch_key = (self.cfg.arch, self.cfg.width, tuple(self.x.shape[1:]))

    def on_device(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[idx].to(self.device), self.y[idx].to(self.device)

    def timed(self, stage: str, idx: np.ndarray, size: int, fn: Callable[[np.ndarray], None]) -> None:
        t = time.perf_counter()
        self.batches.run((stage,) + self.arch_key, idx, size, fn)
        self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - t

    # -- stages -------------------------------------------------------------------------------------
    def clean(self) -> None:
        pred = np.empty(self.n, dtype=np.int64)

        def fn(j):
            with torch.no_grad():
                pred[j] = self.model(self.on_device(j)[0]).argmax(1).cpu().numpy()
        self.timed("clean", np.arange(self.n), self.settings.batch_size, fn)
        self.rows["clean_pred"] = pred
        self.correct = pred == self.rows["label"]

    def pgd(self) -> None:
        # The attack runs on every correctly classified sample (a misclassified one is never robust),
        # certified ones included, so that "certified but broken" can be caught.
        robust = np.zeros(self.n, dtype=bool)
        noise = SampleNoise(derived_seed(self.run.path.name, "pgd"), self.x.shape[1:])

        def fn(j):
            xb, yb = self.on_device(j)
            robust[j] = pgd_robust(self.model, xb, yb, self.eps, steps=self.settings.pgd_steps,
                                   restarts=self.settings.pgd_restarts, start_noise=noise.starts(j)).cpu().numpy()
        self.timed("pgd", np.flatnonzero(self.correct), self.settings.batch_size, fn)
        self.rows["pgd_robust"] = robust
        self.broken = ~robust

    def certifier(self, name: str, idx: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        verdict, margin = np.full(self.n, np.nan), np.full(self.n, np.nan)

        def fn(j):
            xb, yb = self.on_device(j)
            v = certify_batch(self.model, xb, yb, self.eps, name, alpha_iterations=self.settings.alpha_iterations,
                              alpha_lr=self.settings.alpha_lr)
            verdict[j], margin[j] = v.certified.cpu().numpy(), v.min_margin.cpu().numpy()
        self.timed(name, idx, size, fn)
        self.rows[col(name)], self.rows[margin_col(name)] = verdict, margin
        return verdict, margin

    def full_certifiers(self) -> None:
        everything = np.arange(self.n)
        for name in ("ibp", "lirpa-ibp", "crown-ibp"):
            self.certifier(name, everything, self.settings.batch_size)
        # cumulative cascade: crown-ibp's column includes IBP's verdicts
        self.certified = (self.rows[col("ibp")] == 1) | (self.rows[col("crown-ibp")] == 1)
        self.rows[col("crown-ibp")] = self.certified.astype(float)

    def undecided(self) -> np.ndarray:
        return np.flatnonzero(self.correct & ~self.broken & ~self.certified)

    def budgeted_certifier(self, name: str, budget: int) -> None:
        idx, covered = budgeted(self.undecided(), budget, self.n)
        self.covered[covered_key(name)] = covered
        verdict, _ = self.certifier(name, idx, self.settings.crown_batch_size)
        cumulative = np.full(self.n, np.nan)
        cumulative[:covered] = self.certified[:covered] | (verdict[:covered] == 1)
        self.rows[col(name)] = cumulative
        self.certified = self.certified | (verdict == 1)
        if budget > 0:
            self.log(f"  {name}: {len(idx)} undecided sample(s) bounded, covering the first {covered}; "
                     f"{self.times.get(name, 0.0):.1f}s")

    def eps_sweep(self) -> list[dict]:
        sweep = []
        m = min(self.settings.n_sweep, self.n)
        for frac in self.settings.eps_sweep:
            t0 = time.perf_counter()
            cert = np.zeros(m, dtype=bool)

            def fn(j, frac=frac):
                xb, yb = self.on_device(j)
                cert[j] = certify_batch(self.model, xb, yb, self.eps * frac, "ibp").certified.cpu().numpy()
            self.batches.run(("eps-sweep",) + self.arch_key, np.arange(m), self.settings.batch_size, fn)
            sweep.append({"eps": self.eps * frac, "fraction": frac, "n": m, "cert_ibp": 100 * int(cert.sum()) / max(m, 1),
                          "time_s": time.perf_counter() - t0})
        return sweep


def certify_run(run: RunDir, settings: CertifySettings, *, device: str = "auto", log=print,
                force: bool = False) -> pd.DataFrame:
    """Evaluate a finished run's model on the test set; skip when records with the same settings exist."""
    out_csv, out_json = run.path / "certify.csv", run.path / "certify.json"
    if not run.finished:
        raise RuntimeError(f"run {run.path.name} is not finished; train it first")
    if not force and is_certified(run, settings):
        return pd.read_csv(out_csv)
    dev = resolve_device(device)
    reset_peak_memory(dev)
    with exact_arithmetic(dev):
        c = _Certification(run, settings, dev, log)
        c.clean()
        c.pgd()
        c.full_certifiers()
        c.budgeted_certifier("crown", settings.crown_samples)
        c.budgeted_certifier("alpha-crown", settings.alpha_crown_samples)
        df = pd.DataFrame(c.rows)
        check_invariants(df, where=f"run {run.path.name}")
        sweep = c.eps_sweep()
    atomic_write_text(out_csv, df.to_csv(index=False))
    meta = {"run_id": run.path.name, "settings": settings.to_dict(), "eps": c.eps, "n_test": c.n,
            "device": str(dev), "device_name": device_name(dev), "times_s": c.times, "eps_sweep": sweep,
            **c.covered, "batch_sizes": c.batches.used, "peak_memory_gib": peak_memory_gib(dev)}
    write_json(out_json, meta)
    return df


def is_certified(run: RunDir, settings: CertifySettings) -> bool:
    """Whether the run has certification records made with exactly these settings."""
    out_json = run.path / "certify.json"
    if not (out_json.exists() and (run.path / "certify.csv").exists()):
        return False
    return json.loads(out_json.read_text()).get("settings") == settings.to_dict()


def summarize(df: pd.DataFrame) -> dict[str, float]:
    """Accuracies in percent; a certifier not run gives NaN, never 0.

    A budgeted stage's accuracy is over the prefix it covered (its non-empty cells).
    """
    out = {"n_test": len(df), "clean_acc": 100 * float((df["clean_pred"] == df["label"]).mean()),
           "pgd_acc": 100 * float(df["pgd_robust"].astype(bool).mean())}
    for c in CERTIFIERS:
        v = df[col(c)].dropna()
        out[col(c)] = 100 * float(v.astype(bool).mean()) if len(v) else float("nan")
    return out

