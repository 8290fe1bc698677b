"""Kills and interrupts of the local pool (real processes, real signals): nothing of the pool outlives
its driver, no claim stays held, and the next invocation resumes to the records of an uninterrupted run.

``reproduce --executor local --workers 2`` runs in its own session, so that whatever a failing test
leaves is still ended (its process group) in ``finally``.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from faultkit import (
    alive,
    certifying,
    children,
    cli_args,
    dirs_in,
    end_session,
    messages,
    records,
    runs,
    spawned_workers,
    start_cli,
    temporaries,
    training,
    wait_until,
    write_profile,
)

from harness.orchestration.pipeline import reproduce
from harness.rundir import is_locked, job_record

#: How long the workers may outlive their driver (the watch thread polls every 0.2 s; PDEATHSIG is at once).
GRACE_S = 5.0


def wait_gone(pids: list[int], grace_s: float = GRACE_S) -> list[int]:
    """The processes of ``pids`` still alive after ``grace_s`` seconds."""
    deadline = time.monotonic() + grace_s
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def kill_driver_when(what: str, pred, proc, every: float = 0.02) -> None:
    """SIGKILL the driver (only: as kill -9 or the OOM killer would) once ``pred`` holds; its pool must be
    gone within :data:`GRACE_S` seconds."""
    wait_until(what, pred, proc, every=every)
    pool = children(proc.pid)  # two workers and multiprocessing's resource tracker
    assert len(pool) >= 2, pool
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    left = wait_gone(pool)
    assert not left, f"pool processes {left} outlived their driver, killed {what}, by {GRACE_S} s"


@pytest.mark.slow
def test_sigkill_of_the_pool_driver_at_start_in_training_and_in_certification_leaves_no_worker_and_resumes(
        reference, tmp_path):
    profile = write_profile(tmp_path)
    rs = runs(profile, tmp_path)
    args = cli_args(profile, tmp_path, "--executor", "local", "--workers", "2")
    proc = start_cli(args)
    try:  # killed the moment its workers start: before they could set up anything (the widest window)
        kill_driver_when("two spawned workers", lambda: len(spawned_workers(proc.pid)) >= 2, proc, every=0.005)
    finally:
        end_session(proc)

    proc = start_cli(args)
    try:
        kill_driver_when("a run between two epochs", lambda: training(rs), proc)
    finally:
        end_session(proc)
    assert not any(is_locked(r) for r in rs), "a dead worker's claim is still held"
    interrupted = [r for r in rs if r.checkpoint.exists() and not r.finished]
    assert interrupted

    proc = start_cli(args)  # the same command again: it resumes, and is killed while it certifies
    try:
        kill_driver_when("a certification under way", lambda: certifying(profile, rs), proc)
    finally:
        end_session(proc)
    assert not any(is_locked(r) for r in rs), "a dead worker's claim is still held"
    for r in interrupted:
        assert "resuming after epoch 1/2" in (r.path / "job.log").read_text()

    logs: list[str] = []
    assert reproduce(profile, device="cpu", threads=1, log=logs.append, **dirs_in(tmp_path)) == 0
    assert any("to certify" in line and " 0 to certify" not in line for line in logs), logs
    assert not temporaries(tmp_path)  # a write cut short by a kill is removed by the next claim
    for mine, ref in zip(rs, runs(reference.profile, reference.root)):
        assert records(profile, mine).read_bytes() == records(reference.profile, ref).read_bytes()


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_releases_their_claims_and_says_how_to_resume(tmp_path):
    """Ctrl-C reaches the whole process group; the workers ignore it and their driver stops them, so this
    covers a SIGINT of the driver alone too (the workers stop only because the driver ends them)."""
    profile = write_profile(tmp_path)
    rs = runs(profile, tmp_path)
    proc = start_cli(cli_args(profile, tmp_path, "--executor", "local", "--workers", "2"))
    try:
        wait_until("a run between two epochs", lambda: training(rs), proc)
        pool = children(proc.pid)
        busy = [r for r in rs if job_record(r).get("state") == "running"]
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, err = proc.communicate(timeout=60)
        left = wait_gone(pool)
    finally:
        end_session(proc)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err, err
    assert messages(err) == ["interrupted; run the same command again to resume"], err
    assert "worker(s); their runs are released" in out, out
    assert not left, f"pool processes {left} still alive after Ctrl-C"
    assert not any(is_locked(r) for r in rs)
    for r in busy:
        rec = job_record(r)
        assert rec["state"] == "interrupted" and "Ctrl-C" in rec["error"], rec
