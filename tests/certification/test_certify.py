"""harness.certification.run: out-of-memory errors split batches without skipping or repeating a sample, and
the records do not depend on the batching or on what the process did before."""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from harness.certification import cascade as cascade_module
from harness.certification.cascade import budgeted
from harness.certification.records import summarize
from harness.certification.run import certify_paths, certify_run
from harness.config.profile import load_profile
from harness.config.settings import CertifySettings
from harness.orchestration.jobs import set_threads
from harness.rundir import RunDir
from harness.runtime.batching import AdaptiveBatches, forget_known_sizes


@pytest.fixture()
def smoke_run(smoke_inline, tmp_path):
    """A copy of the smoke profile's MTL-IBP run (trained and certified by the session's inline run)."""
    cfg = [c for c in load_profile("smoke").runs() if c.method == "mtl_ibp"][0]
    src = RunDir.of(cfg, smoke_inline.dirs["runs_root"])
    dst = RunDir(tmp_path / cfg.run_id)
    shutil.copytree(src.path, dst.path)
    return src, dst


def test_out_of_memory_splits_batches_and_gives_the_same_records(smoke_run, monkeypatch):
    src, dst = smoke_run
    forget_known_sizes()
    limit = 7
    seen: Counter = Counter()
    real_certify, real_pgd = cascade_module.certify_batch, cascade_module.pgd_robust

    def tight(fn, name):
        def wrapped(model, x, y, eps, *args, **kw):
            if len(x) > limit:
                raise torch.OutOfMemoryError(f"CUDA out of memory (injected: {len(x)} > {limit})")
            out = fn(model, x, y, eps, *args, **kw)
            seen[name if name != "cert" else args[0]] += len(x)
            return out
        return wrapped

    monkeypatch.setattr(cascade_module, "certify_batch", tight(real_certify, "cert"))
    monkeypatch.setattr(cascade_module, "pgd_robust", tight(real_pgd, "pgd"))
    logs: list[str] = []
    settings = load_profile("smoke").certify
    previous = set_threads(1)  # as the session's smoke run certified it (CPU results depend on the threads)
    try:
        df = certify_run(dst, settings, device="cpu", force=True, log=logs.append)
    finally:
        set_threads(previous)
    assert any("out of memory in" in line for line in logs)
    # The same records: no sample skipped, none counted twice, no random start drawn differently. Only
    # the margins may differ, in their last float32 bits: a batched product's rounding depends on the
    # batch size (and auto_LiRPA refines the neurons unstable anywhere in its batch).
    ref = pd.read_csv(certify_paths(src, settings)[0])
    mine = pd.read_csv(certify_paths(dst, settings)[0])
    margins = [c for c in ref if c.startswith("margin_")]
    pd.testing.assert_frame_equal(mine.drop(columns=margins), ref.drop(columns=margins), check_exact=True)
    pd.testing.assert_frame_equal(mine[margins], ref[margins], rtol=1e-5, atol=1e-5)
    assert seen["pgd"] == int((ref["clean_pred"] == ref["label"]).sum())   # each correct sample attacked once
    for name in ("ibp", "lirpa-ibp", "crown-ibp"):
        assert seen[name] == len(df)
    assert seen["crown"] == int(df["margin_crown"].notna().sum())
    forget_known_sizes()


def test_adaptive_batches_keep_the_size_that_worked_and_reraise_other_errors():
    forget_known_sizes()
    done: list[int] = []

    def fn(chunk):
        if len(chunk) > 3:
            raise torch.OutOfMemoryError("out of memory")
        done.extend(chunk.tolist())

    ab = AdaptiveBatches(torch.device("cpu"), log=lambda *_: None)
    ab.run(("x",), np.arange(20), 16, fn)
    assert done == list(range(20)) and ab.used["x"] == 2
    done.clear()
    AdaptiveBatches(torch.device("cpu"), log=lambda *_: None).run(("x",), np.arange(5), 16, fn)
    assert done == list(range(5))  # started at the remembered size: no failed attempt needed

    def broken(chunk):
        raise ValueError("not memory")

    with pytest.raises(ValueError, match="not memory"):
        ab.run(("y",), np.arange(4), 4, broken)

    def always(chunk):
        raise torch.OutOfMemoryError("out of memory")

    with pytest.raises(torch.OutOfMemoryError):  # one sample that does not fit is an error, not a skip
        ab.run(("z",), np.arange(4), 4, always)
    forget_known_sizes()


def test_a_budget_covers_the_prefix_up_to_its_last_sample():
    undecided = np.array([3, 8, 9, 15])
    idx, covered = budgeted(undecided, 2, 20)
    assert idx.tolist() == [3, 8] and covered == 9
    idx, covered = budgeted(undecided, 10, 20)
    assert idx.tolist() == [3, 8, 9, 15] and covered == 20
    idx, covered = budgeted(undecided, 0, 20)
    assert idx.tolist() == [] and covered == 0


def test_autoattack_complete_and_alarm_stages_decide_undecided_samples(mlp_run, tmp_path):
    from harness.config.settings import CertifySettings

    settings = CertifySettings(n_test=120, crown_samples=200, alpha_crown_samples=10, alpha_iterations=5,
                               pgd_steps=10, pgd_restarts=1, batch_size=120, crown_batch_size=20,
                               autoattack_samples=6, autoattack_certified_check=3, autoattack_batch_size=50,
                               complete_samples=200, complete_time_limit_s=60.0)
    previous = set_threads(1)
    try:
        df = certify_run(mlp_run, settings, device="cpu", log=lambda *_: None)
    finally:
        set_threads(previous)
    import json

    meta = json.loads(certify_paths(mlp_run, settings)[1].read_text())
    assert meta["n_autoattack"] > 0 and meta["n_complete"] == 120 and meta["alarm_samples"] > 0
    counts = meta["complete_counts"]
    ran = df["complete"].fillna("").astype(str)
    assert counts["verified"] == (ran == "verified").sum() and counts["unknown"] == (ran == "unknown").sum()
    assert counts["verified"] + counts["counterexample"] > 0
    # the cumulative column includes every cheaper certifier and the MILP's verified samples
    assert ((df["cert_complete"] == 1) == ((df["cert_alpha_crown"] == 1) | (ran == "verified"))).all()
    # a counterexample is a sample no certifier certified and no cheaper attack broke
    cex = ran == "counterexample"
    assert not (df.loc[cex, "cert_alpha_crown"] == 1).any() and df.loc[cex, "pgd_robust"].all()
    s = summarize(df)
    assert s["robust_lower"] == pytest.approx(100 * (df["cert_complete"] == 1).mean())
    assert s["robust_upper"] - s["robust_lower"] == pytest.approx(s["unknown"])
    assert s["unknown"] == pytest.approx(100 * counts["unknown"] / 120)
    assert s["aa_acc"] <= s["pgd_acc"] + 1e-9
    assert not list(mlp_run.path.glob("*.partial.*"))


def test_pgd_left_out_on_certified_samples_gives_the_same_records(mlp_run, tmp_path, monkeypatch):
    """``pgd_on_certified = false``: PGD attacks only the correct samples that IBP / CROWN-IBP left
    undecided, and the records are those of attacking every correct sample (a certified one is robust)."""
    run = RunDir(tmp_path / mlp_run.path.name)
    shutil.copytree(mlp_run.path, run.path)
    every = CertifySettings(n_test=300, pgd_steps=10, pgd_restarts=1, batch_size=100)
    fewer = replace(every, pgd_on_certified=False)
    assert fewer.key != every.key and "pgd_on_certified" not in every.to_dict()
    attacked: list[int] = []
    real_pgd = cascade_module.pgd_robust

    def counting(model, x, *args, **kw):
        attacked.append(len(x))
        return real_pgd(model, x, *args, **kw)

    monkeypatch.setattr(cascade_module, "pgd_robust", counting)
    ref = certify_run(run, every, device="cpu", log=lambda _: None)
    correct = ref["clean_pred"] == ref["label"]
    assert sum(attacked) == int(correct.sum())
    attacked.clear()
    mine = certify_run(run, fewer, device="cpu", log=lambda _: None)
    certified = (ref["cert_crown_ibp"] == 1) | (ref["cert_ibp"] == 1)
    assert certified.sum() > 10 and sum(attacked) == int((correct & ~certified).sum())
    assert mine["pgd_robust"].tolist() == ref["pgd_robust"].tolist()
    assert summarize(mine)["pgd_acc"] == summarize(ref)["pgd_acc"]


def test_the_complete_stage_in_two_processes_gives_the_same_records(mlp_run, tmp_path):
    """``complete_jobs = 2``: the MILP's samples go to two worker processes, and every record (verdicts
    and the MILP's margin bounds) equals the one-process certification's."""
    run = RunDir(tmp_path / mlp_run.path.name)
    shutil.copytree(mlp_run.path, run.path)
    one = CertifySettings(n_test=1000, pgd_steps=10, pgd_restarts=1, batch_size=500, complete_samples=12,
                          complete_time_limit_s=60.0)
    two = replace(one, complete_jobs=2)
    assert two.key != one.key and "complete_jobs" not in one.to_dict()
    previous = set_threads(1)
    try:
        logs: list[str] = []
        ref = certify_run(run, one, device="cpu", log=lambda _: None)
        mine = certify_run(run, two, device="cpu", log=logs.append)
    finally:
        set_threads(previous)
    assert (ref["complete"] != "").sum() >= 6 and any("in 2 processes" in line for line in logs)
    pd.testing.assert_frame_equal(mine, ref)
    import json

    counts = [json.loads(certify_paths(run, s)[1].read_text())["complete_counts"] for s in (one, two)]
    for c in counts:
        del c["median_s"], c["max_s"]
    assert counts[0] == counts[1]
