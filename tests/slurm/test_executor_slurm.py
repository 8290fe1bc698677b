"""`reproduce --executor slurm` on a real SLURM: one job per run, a job killed mid-training and one
signalled as at a time limit, a second invocation finishes what is left, and every table equals
the inline run's (one CPU thread per run, as in the jobs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness.config.profile import load_profile
from harness.rundir import RunDir, job_record

REPO = Path(__file__).resolve().parents[2]
# The smoke profile with 12x its training images: a smoke job trains for a second or two, too short on
# a quiet machine for a scancel to land while it trains; these train for several seconds each.
SLOW_SMOKE = (REPO / "benchmarks" / "smoke.toml").read_text().replace("train_subset = 512", "train_subset = 6144")


def _reproduce(dirs: dict, partition: str, profile: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "harness", "reproduce", "--profile", str(profile), "--executor", "slurm",
           "--slurm-partition", partition, "--slurm-cpus-per-task", "1", "--slurm-timeout-min", "20",
           "--poll", "1", "--device", "cpu", "--runs", str(dirs["runs_root"]), "--results", str(dirs["results_dir"]),
           "--plots", str(dirs["plots_dir"])]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _training_job(runs_root: Path, profile: Path, skip: set[str], timeout: float = 240) -> tuple[str, str]:
    """(run id, SLURM job id) of a run whose SLURM job is training it right now (not the standard
    run's: it trains fastest)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for cfg in load_profile(profile).runs():
            run = RunDir.of(cfg, runs_root)
            rec = job_record(run)
            if cfg.run_id in skip or cfg.method == "standard" or rec.get("state") != "running" \
                    or rec.get("executor") != "slurm":
                continue
            if run.manifest.exists() and json.loads(run.manifest.read_text()).get("status") == "running":
                return cfg.run_id, str(rec["job_id"])
        time.sleep(0.2)
    raise AssertionError("no run was seen training under SLURM")


def test_slurm_executor_survives_a_kill_and_a_requeue_and_matches_inline(slurm_cluster, tmp_path,
                                                                         assert_same_tables):
    from harness.orchestration.pipeline import reproduce

    profile = tmp_path / "smoke.toml"
    profile.write_text(SLOW_SMOKE)
    dirs = {"runs_root": tmp_path / "runs", "results_dir": tmp_path / "results", "plots_dir": tmp_path / "plots"}
    first = _reproduce(dirs, slurm_cluster.partition, profile)
    try:
        killed_run, killed_job = _training_job(dirs["runs_root"], profile, set())
        subprocess.run(["scancel", killed_job], check=True, timeout=60)
        requeued_run, requeued_job = _training_job(dirs["runs_root"], profile, {killed_run})
        # what SLURM sends before a time limit: submitit's handler requeues the job, which resumes the run
        subprocess.run(["scancel", "--signal=USR2", requeued_job], check=True, timeout=60)
        out, _ = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 1, out                    # the killed run (and maybe its students) failed
    assert f"FAILED: SLURM job {killed_job} ended without finishing the run" in out
    assert RunDir(dirs["runs_root"] / requeued_run).finished  # requeued, then finished in the same job id

    second = _reproduce(dirs, slurm_cluster.partition, profile)
    out2, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out2
    assert "0 skipped (data missing), " in out2 and f"submitted {killed_run} as SLURM job" in out2
    assert f"submitted {requeued_run}" not in out2       # nothing done twice

    # the reference: the same profile inline, one CPU thread per run as in the SLURM jobs
    ref = {k: tmp_path / "inline" / k for k in dirs}
    assert reproduce(profile, device="cpu", threads=1, log=lambda *_: None, **ref) == 0
    assert_same_tables(dirs["results_dir"], ref["results_dir"])
    for cfg in load_profile(profile).runs():
        rec = job_record(RunDir.of(cfg, dirs["runs_root"]))
        assert rec["executor"] == "slurm" and rec["state"] == "done" and rec["threads"] == 1
        assert list((dirs["runs_root"] / cfg.run_id / "slurm").glob("*_log.out"))  # job logs in the run folder
