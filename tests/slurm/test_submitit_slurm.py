"""submitit against a real SLURM, used the way the harness's `slurm` executor uses it.

Each test submits small Python callables through `submitit.AutoExecutor(cluster="slurm")` to the
session's test cluster (`slurm_cluster` in conftest.py): a result and its log, a dependency
(`afterok`), a requeue through submitit's checkpoint handler, and a cancellation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
from submitit.core.utils import UncompletedJobError

# The jobs' Python cannot import this test module (tests/slurm is not on its path), so the
# callables below travel by value inside submitit's pickles.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.slow

JOB_WAIT_S = 90  # bound on any wait for a job; generous for a loaded 2-core machine


def _executor(cluster, folder: Path, **parameters) -> submitit.AutoExecutor:
    """An executor on the test cluster's partition, one CPU per job, as the harness configures it."""
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    assert executor.cluster == "slurm"
    executor.update_parameters(
        slurm_partition=cluster.partition, cpus_per_task=1, timeout_min=5, **parameters
    )
    return executor


def _slurm(*args: str) -> str:
    return subprocess.run(list(args), check=True, capture_output=True, text=True).stdout


def _wait_done(job: submitit.Job, timeout_s: float = JOB_WAIT_S) -> None:
    """Wait until submitit sees the job finished; fail with the queue and its logs otherwise."""
    deadline = time.monotonic() + timeout_s
    while not job.done():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"job {job.job_id} not done after {timeout_s} s; squeue: "
                f"{_slurm('squeue', '-h', '-j', job.job_id, '-o', '%T %r')!r}\n"
                f"stdout: {job.stdout()}\nstderr: {job.stderr()}"
            )
        time.sleep(0.2)


def _wait_for(condition, what: str, timeout_s: float = JOB_WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def _sacct_state(job_id: str) -> str:
    """The job's state in SLURM's accounting (what submitit reads), waiting for it to be final."""
    final = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT")
    state = ""

    def settled() -> bool:
        nonlocal state
        lines = _slurm("sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id).split()
        state = lines[0] if lines else ""
        return state.startswith(final)

    _wait_for(settled, f"a final state of job {job_id} in sacct")
    return state


# ---------------------------------------------------------------- job callables


def double_and_report(x: int) -> tuple[int, str | None]:
    """Job: prints a marker to its log, returns 2x and the SLURM job id it ran under."""
    print(f"double_and_report got {x}", flush=True)
    return 2 * x, os.environ.get("SLURM_JOB_ID")


def timed_sleep(seconds: float) -> tuple[float, float]:
    """Job: sleeps, returns its start and end wall-clock times."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def wait_forever(started: Path) -> None:
    """Job: marks that it runs, then sleeps far longer than any test waits."""
    started.write_text(os.environ["SLURM_JOB_ID"])
    time.sleep(600)


class StepCounter(submitit.helpers.Checkpointable):
    """Job: `total` steps of `step_s` seconds each, one line per finished step in `log`.

    The progress lives in the instance (`self.done`): submitit's checkpoint pickles the instance,
    so a requeued run starts from the steps already done. A line reads
    "STEP RESTART_COUNT PID", RESTART_COUNT being SLURM's count of this job's requeues.
    """

    def __init__(self, log: Path, total: int, step_s: float) -> None:
        self.log, self.total, self.step_s = log, total, step_s
        self.done = 0

    def __call__(self) -> int:
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        while self.done < self.total:
            time.sleep(self.step_s)
            # Record the step and count it as one: submitit's handler for the pre-timeout signal
            # pickles `self`, and must not see a step logged but not counted (or the reverse).
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
            with self.log.open("a") as f:
                f.write(f"{self.done} {restarts} {os.getpid()}\n")
            self.done += 1
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
        return self.done


# ---------------------------------------------------------------- tests


def test_submit_returns_result_and_writes_log(slurm_cluster, tmp_path):
    job = _executor(slurm_cluster, tmp_path).submit(double_and_report, 21)
    _wait_done(job)
    assert job.result() == (42, job.job_id)
    assert job.paths.stdout.parent == tmp_path
    assert "double_and_report got 21" in job.paths.stdout.read_text()
    # submitit reads states from sacct: the accounting must know the job ended well.
    assert _sacct_state(job.job_id) == "COMPLETED"
    assert job.get_info(mode="force")["State"] == "COMPLETED"


def test_dependent_job_starts_after_its_dependency(slurm_cluster, tmp_path):
    executor = _executor(slurm_cluster, tmp_path)
    first = executor.submit(timed_sleep, 4.0)
    # Control: a job with no dependency runs beside `first` (two 1-CPU jobs at once), so the
    # order asserted for `second` comes from the dependency, not from a cluster running one job.
    beside = executor.submit(timed_sleep, 0.1)
    executor.update_parameters(slurm_additional_parameters={"dependency": f"afterok:{first.job_id}"})
    second = executor.submit(timed_sleep, 0.1)
    for job in (first, beside, second):
        _wait_done(job)
    first_start, first_end = first.result()
    beside_start, _ = beside.result()
    second_start, _ = second.result()
    assert beside_start < first_end
    assert second_start >= first_end


def test_checkpointable_job_is_requeued_and_resumes(slurm_cluster, tmp_path):
    log = tmp_path / "steps.txt"
    total = 16  # 4 s of steps: the signal, sent after 3 steps, lands well before the last one
    job = _executor(slurm_cluster, tmp_path / "jobs").submit(StepCounter(log, total, 0.25))
    _wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 3, "3 steps")
    # What SLURM sends before a time limit (submitit's --signal=USR2@...): USR2 to the job's
    # steps, not to the batch shell, where submitit's handler checkpoints and requeues the job.
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    _wait_done(job)
    assert job.result() == total

    rows = [line.split() for line in log.read_text().splitlines()]
    steps = [int(step) for step, _, _ in rows]
    assert steps == list(range(total)), "each step exactly once, in order: resumed, not restarted"
    restarts = [restart for _, restart, _ in rows]
    first_run = restarts.count("0")
    assert 3 <= first_run < total, "the signal cut the first run short"
    assert restarts == ["0"] * first_run + ["1"] * (total - first_run)
    assert len({pid for _, _, pid in rows[:first_run]} & {pid for _, _, pid in rows[first_run:]}) == 0
    submitit_log = job.paths.stdout.read_text()
    assert "Calling checkpoint method" in submitit_log
    assert f"Requeued job {job.job_id}" in submitit_log
    assert _sacct_state(job.job_id) == "COMPLETED"


def test_cancelled_job_is_cancelled_and_its_result_raises(slurm_cluster, tmp_path):
    started = tmp_path / "started"
    job = _executor(slurm_cluster, tmp_path / "jobs").submit(wait_forever, started)
    _wait_for(started.exists, "the job to start")
    subprocess.run(["scancel", job.job_id], check=True)
    _wait_done(job)
    assert job.state.startswith("CANCELLED")  # what submitit read from sacct ("CANCELLED by 0")
    # submitit waits this long for a result file a slow shared file system may not show yet;
    # 15 s by default. Here the folder is local, and no result will ever come.
    job._results_timeout_s = 1
    with pytest.raises(UncompletedJobError, match="has not produced any output"):
        job.result()
