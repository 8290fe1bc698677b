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

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from harness.bounds import certify as certify_batch
from harness.certification.cascade import Cascade
from harness.certification.records import check_invariants
from harness.config.settings import CertifySettings
from harness.rundir import RunDir, atomic_write_text, write_json
from harness.runtime.device import device_name, exact_arithmetic, peak_memory_gib, reset_peak_memory, resolve_device

__all__ = ["certify_paths", "certify_run", "eps_sweep", "is_certified", "records_problem", "set_aside_bad_records"]


def certify_run(run: RunDir, settings: CertifySettings, *, device: str = "auto", log=print,
                force: bool = False) -> pd.DataFrame:
    """Evaluate a finished run's model on the test set; skip when records with the same settings exist."""
    out_csv, out_json = certify_paths(run, settings)
    if not run.finished:
        raise RuntimeError(f"run {run.path.name} is not finished; train it first")
    set_aside_bad_records(run, settings, log)
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
    text = df.to_csv(index=False)
    atomic_write_text(out_csv, text)
    meta = {"run_id": run.path.name, "settings": settings.to_dict(), "eps": c.eps, "n_test": c.n,
            "records_sha256": hashlib.sha256(text.encode()).hexdigest(),  # tells a truncated CSV
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
            "alarm_samples": c.stats.get("alarm_samples", 0), "pgd_attacked": c.stats.get("pgd_attacked")}


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
    """Whether the run has complete certification records made with exactly these settings."""
    out_csv, out_json = certify_paths(run, settings)
    if not (out_json.exists() and out_csv.exists()):
        return False
    try:
        meta = json.loads(out_json.read_text())
    except json.JSONDecodeError:
        return False
    return meta.get("settings") == settings.to_dict() and records_problem(run, settings) is None


def records_problem(run: RunDir, settings: CertifySettings) -> str | None:
    """What is wrong with the run's records under ``settings`` (truncated, corrupted), or None.

    The metadata, written after the records, holds their SHA-256; records from before it was recorded
    are checked for their row count instead.
    """
    out_csv, out_json = certify_paths(run, settings)
    if not out_csv.exists():
        return None
    if not out_json.exists():
        return None  # a certification that stopped between its two writes: it is simply redone
    try:
        meta = json.loads(out_json.read_text())
    except json.JSONDecodeError:
        return f"{out_json.name} is not valid JSON"
    data = out_csv.read_bytes()
    if "records_sha256" in meta:
        if hashlib.sha256(data).hexdigest() != meta["records_sha256"]:
            return "its checksum does not match (truncated or corrupted)"
        return None
    rows = max(data.count(b"\n") - 1, 0) if data.endswith(b"\n") else -1
    if rows != meta.get("n_test"):
        return f"it has {max(rows, 0)} complete rows, not the {meta.get('n_test')} recorded (truncated)"
    return None


def set_aside_bad_records(run: RunDir, settings: CertifySettings, log=print) -> bool:
    """Rename truncated or corrupted records (and their metadata) to ``*.corrupt-<time>``, never delete
    them, with a warning naming the file, so that they are certified again; whether any were."""
    why = records_problem(run, settings)
    if why is None:
        return False
    stamp = int(time.time())
    for path in certify_paths(run, settings):
        if path.exists():
            os.replace(path, path.with_name(f"{path.name}.corrupt-{stamp}"))
    log(f"warning: certification records {certify_paths(run, settings)[0]} are unusable ({why}); moved to "
        f"{certify_paths(run, settings)[0].name}.corrupt-{stamp}; certifying the run again")
    return True
