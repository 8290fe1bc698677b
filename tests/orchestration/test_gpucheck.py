"""The GPU check script, run on the CPU with a tiny model: every stage, one report, the exit status."""

from __future__ import annotations

import json

import pytest

from harness.config.profile import load_profile
from harness.orchestration.gpucheck import SLICE_CERTIFY, TINY_CERTIFY, gpucheck, slice_profile
from harness.orchestration.jobs import set_threads


def test_slice_is_the_paper_setting_cut_short():
    full = slice_profile(2, tiny=False)
    run = full.plan()[0].cfg
    assert (run.arch, run.batch_size, run.epochs, run.train_eps, run.lr_milestones) == ("cnn7", 256, 2, 0.2, (50, 60))
    assert {p.cfg.method for p in full.plan()} == set(load_profile("paper").settings[0].methods)
    assert full.certify.crown_samples > 0 and full.certify.alpha_crown_samples > 0
    # the slice is certified with its own (short) settings, not the paper profile's
    assert {full.certify_for(p) for p in full.plan()} == {SLICE_CERTIFY}
    assert {slice_profile(1, tiny=True).certify_for(p) for p in full.plan()} == {TINY_CERTIFY}


@pytest.mark.slow
def test_gpucheck_runs_every_stage_on_the_cpu_and_reports(tmp_path):
    previous = set_threads(1)
    try:
        code = gpucheck("cpu", tmp_path, tiny=True, epochs=1, log=lambda *_: None)
    finally:
        set_threads(previous)
    report = json.loads((tmp_path / "gpucheck.json").read_text())
    assert code == 0, {k: v.get("error") or v.get("problems") for k, v in report["stages"].items()}
    assert set(report["stages"]) == {"environment", "paper-slice", "cuda-tests", "bench"}
    assert all(st["ok"] for st in report["stages"].values())
    slice_ = report["stages"]["paper-slice"]
    assert len(slice_["runs"]) == len(slice_profile(1, tiny=True).plan()) and slice_["runs_with_crown"] >= 1 and slice_["runs_with_alpha_crown"] >= 1
    assert all(r["epoch_time_s"] and r["certify_times_s"] for r in slice_["runs"])
    assert "skipped" in " ".join(report["stages"]["cuda-tests"]["tail"])  # no CUDA here: the CUDA tests skip
    md = (tmp_path / "gpucheck.md").read_text()
    assert md.startswith("# GPU check") and "result: PASS" in md and (tmp_path / "bench_train.csv").exists()
