"""Executors give the inline run's tables: in worker processes, and after a kill during certification.

The reference is the session's inline smoke run (tests/conftest.py) with one CPU thread per run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.certification.run import certify_paths
from harness.config.profile import load_profile
from harness.orchestration.pipeline import reproduce
from harness.rundir import RunClaimed, RunDir, claim, is_locked, job_record

REPO = Path(__file__).resolve().parents[2]


def records(run: RunDir) -> Path:
    """The run's per-sample certification records under the smoke profile's settings."""
    return certify_paths(run, load_profile("smoke").certify)[0]


def dirs_in(root: Path) -> dict[str, Path]:
    return {"runs_root": root / "runs", "results_dir": root / "results", "plots_dir": root / "plots"}


def test_local_workers_give_the_inline_tables_and_records(smoke_inline, tmp_path, assert_same_tables):
    dirs = dirs_in(tmp_path)
    logs: list[str] = []
    assert reproduce("smoke", device="cpu", executor="local", workers=2, log=logs.append, **dirs) == 0
    assert_same_tables(dirs["results_dir"], smoke_inline.dirs["results_dir"])
    for cfg in load_profile("smoke").runs():
        mine = records(RunDir.of(cfg, dirs["runs_root"])).read_bytes()
        assert mine == records(RunDir.of(cfg, smoke_inline.dirs["runs_root"])).read_bytes()
        rec = job_record(RunDir.of(cfg, dirs["runs_root"]))
        assert rec["executor"] == "local" and rec["threads"] == 1 and rec["state"] == "done"
        assert (dirs["runs_root"] / cfg.run_id / "job.log").read_text()  # the worker's log of the run
    n = len(load_profile("smoke").plan())
    done = [line for line in logs if line.startswith("[") and f"/{n}] " in line]
    assert len(done) == n and "ETA" in done[-1]


def _certifying(runs_root: Path) -> bool:
    """Some run is trained and its certification is under way (no records yet)."""
    for cfg in load_profile("smoke").runs():
        run = RunDir.of(cfg, runs_root)
        if run.finished and not records(run).exists() and job_record(run).get("state") == "running":
            return True
    return False


def test_a_reproduce_killed_during_certification_resumes_to_identical_tables(smoke_inline, tmp_path,
                                                                            assert_same_tables):
    dirs = dirs_in(tmp_path)
    cmd = [sys.executable, "-m", "harness", "reproduce", "--profile", "smoke", "--device", "cpu", "--threads", "1",
           "--runs", str(dirs["runs_root"]), "--results", str(dirs["results_dir"]), "--plots", str(dirs["plots_dir"])]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not _certifying(dirs["runs_root"]):
            assert proc.poll() is None and time.monotonic() < deadline, "never saw a certification under way"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    logs: list[str] = []
    assert reproduce("smoke", device="cpu", threads=1, log=logs.append, **dirs) == 0
    # a file being written when the kill came stays under its temporary name; the next claim removes it
    assert not any(p.name.startswith(".") and ".tmp" in p.name for p in dirs["runs_root"].rglob("*"))
    assert any("to certify" in line and "0 to certify" not in line for line in logs)
    assert_same_tables(dirs["results_dir"], smoke_inline.dirs["results_dir"])
    for cfg in load_profile("smoke").runs():
        a = records(RunDir.of(cfg, dirs["runs_root"])).read_bytes()
        assert a == records(RunDir.of(cfg, smoke_inline.dirs["runs_root"])).read_bytes()


HOLD = """
import sys, time
from pathlib import Path
from harness.rundir import RunDir, claim
with claim(RunDir(Path(sys.argv[1])), executor="test"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_claimed_run_is_refused_to_a_second_worker_and_freed_when_its_holder_dies(tmp_path):
    run = RunDir(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run.path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_locked(run)
        with pytest.raises(RunClaimed, match=f"test worker pid {holder.pid}"):
            with claim(run, wait=False, executor="inline"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert not is_locked(run)  # the kernel released the dead holder's lock
    with claim(run, wait=False, executor="inline"):
        assert job_record(run)["state"] == "running"
    rec = json.loads((run.path / "job.json").read_text())
    assert rec["state"] == "done" and rec["executor"] == "inline" and rec["pid"] == os.getpid()


def test_auto_executor_is_local_on_a_cpu_and_make_reproduce_uses_it():
    from harness.cli import auto_executor

    assert auto_executor("cpu") == "local"
    make = subprocess.run(["make", "-n", "reproduce"], cwd=REPO, capture_output=True, text=True).stdout
    assert "--executor auto" in make
