"""Executors: where the jobs of a plan run. Each job trains and certifies one run (:mod:`harness.orchestration.jobs`).

- ``inline``: one after another in this process (the default).
- ``local``: N worker processes on this machine (``concurrent.futures`` with the ``spawn`` start
  method; each worker imports torch once and takes job after job), ``cores / N`` CPU threads each.
- ``slurm``: one SLURM job per run, submitted with submitit; a student's job depends on its
  teacher's (``afterok``); a job that reaches its time limit or is pre-empted is requeued by submitit
  and resumes from the run's last epoch checkpoint.

Whatever the executor, a job holds its run's claim (an ``flock`` in the run folder), so a second
invocation never works on a run that a live worker holds; it waits for it (local) or attaches to its
SLURM job instead of submitting another. Teachers run before their students; the local executor
starts the jobs in the order it is given (:func:`harness.orchestration.pipeline.schedule`), each as a
worker frees.

A run's numbers do not depend on the executor that ran it, given the same device and, on the CPU,
the same number of torch threads: the thread count changes the order of floating-point sums inside
torch's CPU kernels, and so the last bits of the weights (it is recorded in each run's manifest).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from harness.certification.records import InvariantError, summarize
from harness.certification.run import certify_run, is_certified
from harness.config.constraints import ConfigError
from harness.config.settings import SlurmSettings
from harness.orchestration.jobs import JobResult, JobSpec, file_logger, run_job
from harness.runtime.workers import init_worker
from harness.rundir import DiskWriteError, RunDir, is_locked, job_record, now, update_job_record

EXECUTORS = ("inline", "local", "slurm")


@dataclass
class Outcome:
    """How one job ended, as the executor saw it."""

    spec: JobSpec
    result: JobResult | None = None
    error: str | None = None       # None: succeeded

    @property
    def ok(self) -> bool:
        return self.error is None


OnDone = Callable[[Outcome], None]


def _fatal(e: BaseException) -> bool:
    """Errors that stop the whole invocation: a soundness bug, the user's interrupt, or a file that cannot
    be written (a full disk fails every other run the same way)."""

    return isinstance(e, (InvariantError, KeyboardInterrupt, DiskWriteError))


def _blocked(spec: JobSpec, failed: set[str]) -> Outcome | None:
    if spec.teacher in failed:
        return Outcome(spec, error=f"not run: its teacher {spec.teacher} failed")
    return None


class InlineExecutor:
    """Every job in this process, in plan order (teachers come first in the plan)."""

    name = "inline"

    def __init__(self, threads: int | None = None, log: Callable[[str], None] = print) -> None:
        self.threads, self.log = threads, log

    def execute(self, specs: list[JobSpec], on_done: OnDone) -> list[Outcome]:
        outcomes, failed = [], set()
        for spec in specs:
            spec = replace(spec, executor=self.name, threads=self.threads)
            out = _blocked(spec, failed)
            if out is None:
                try:
                    out = Outcome(spec, run_job(spec, log=self.log))
                except BaseException as e:  # noqa: BLE001 - recorded; fatal ones re-raised
                    if _fatal(e):
                        raise
                    out = Outcome(spec, error=f"{type(e).__name__}: {e}")
            if not out.ok:
                failed.add(spec.run_id)
            outcomes.append(out)
            on_done(out)
        return outcomes


def _worker_job(spec: JobSpec) -> JobResult:
    """What a local worker runs: one job, its detailed log in the run folder."""
    root = Path(spec.runs_root) / spec.run_id
    root.mkdir(parents=True, exist_ok=True)
    return run_job(spec, log=file_logger(root / "job.log"))


class LocalExecutor:
    """Jobs in ``workers`` processes on this machine, each with ``threads`` CPU threads."""

    name = "local"

    def __init__(self, workers: int, threads: int | None = None, log: Callable[[str], None] = print) -> None:
        check_counts(workers, threads)
        self.workers = workers
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self.log = log

    def execute(self, specs: list[JobSpec], on_done: OnDone) -> list[Outcome]:
        specs = [replace(s, executor=self.name, threads=self.threads) for s in specs]
        ids = {s.run_id for s in specs}
        waiting = list(specs)
        running: dict[Future, JobSpec] = {}
        finished, failed, outcomes = set(), set(), []

        def ready(s: JobSpec) -> bool:
            return s.teacher is None or s.teacher not in ids or s.teacher in finished

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=init_worker,
                                 initargs=(self.threads, os.getpid())) as pool:
            try:
                while waiting or running:
                    for s in [s for s in waiting if s.teacher in failed]:
                        waiting.remove(s)
                        out = _blocked(s, failed)
                        failed.add(s.run_id)
                        outcomes.append(out)
                        on_done(out)
                    # A job is handed to the pool only when a worker is free, the first ready one in the
                    # order given (the pipeline's: teachers, then the longest): the pool's own queue is
                    # first come first served, and students, ready only once their teacher finished,
                    # would otherwise all wait behind every other job and run last, one worker idle.
                    while len(running) < self.workers:
                        s = next((s for s in waiting if ready(s)), None)
                        if s is None:
                            break
                        waiting.remove(s)
                        running[pool.submit(_worker_job, s)] = s
                    if not running:
                        continue
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in done:
                        s = running.pop(fut)
                        try:
                            out = Outcome(s, fut.result())
                            finished.add(s.run_id)
                        except BaseException as e:  # noqa: BLE001 - recorded; fatal ones re-raised
                            if _fatal(e):
                                raise
                            out = Outcome(s, error=f"{type(e).__name__}: {e}")
                            failed.add(s.run_id)
                        outcomes.append(out)
                        on_done(out)
            except BaseException as e:
                # Ctrl-C, a soundness bug or a full disk: every other job would stop or fail the same way,
                # so the workers stop now instead of finishing their current runs (which could take hours).
                procs = list((getattr(pool, "_processes", None) or {}).values())  # shutdown forgets them
                for fut in running:
                    fut.cancel()
                pool.shutdown(wait=False, cancel_futures=True)
                stopped = _stop_workers(procs)
                _record_interrupted(list(running.values()), e)
                if stopped:
                    self.log(f"stopped {stopped} worker(s); their runs are released and resume from their last "
                             f"checkpoint next time")
                raise
        return outcomes


def _stop_workers(procs: list, grace_s: float = 5.0) -> int:
    """End a pool's worker processes (SIGTERM, then SIGKILL after ``grace_s``); how many were alive.

    ``procs``: the pool's own table of its workers (``_processes``: private, but there since Python
    3.2). A worker's death releases its run's claim (an ``flock``).
    """
    procs = [p for p in procs if p.is_alive()]
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5)
    return len(procs)


def _record_interrupted(specs: list[JobSpec], why: BaseException) -> None:
    """Mark the runs that stopped workers were on as interrupted in their ``job.json`` (a stopped worker
    had no chance to), unless something else holds them by now."""
    reason = "interrupted (Ctrl-C)" if isinstance(why, KeyboardInterrupt) else f"stopped: {type(why).__name__}: {why}"
    for spec in specs:
        run = RunDir(Path(spec.runs_root) / spec.run_id)
        if run.path.exists() and not is_locked(run) and job_record(run).get("state") == "running":
            try:
                update_job_record(run, state="interrupted", ended=now(), error=reason[:2000])
            except DiskWriteError:
                pass  # a full disk: the error on its way out says more; status reports the run as interrupted


# ---- SLURM ------------------------------------------------------------------------------------------

LIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED",
               "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT")


def squeue_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """{job id: (state, node list or pending reason)} of the given jobs that SLURM still knows as live.

    ``squeue`` needs no accounting database (submitit's own watcher uses ``sacct``, which many
    clusters, and a test cluster, do not run).
    """
    if not job_ids:
        return {}
    r = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i|%T|%R"], capture_output=True,
                       text=True, timeout=60)
    out = {}
    for line in r.stdout.splitlines():
        jid, state, where = (line.split("|") + ["", ""])[:3]
        if state in LIVE_STATES:
            out[jid.strip()] = (state, where.strip())
    return out


class SlurmTask:
    """The callable a SLURM job runs: one job spec; requeued by submitit on time limit or pre-emption."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec

    def __call__(self) -> JobResult:
        return _worker_job(self.spec)

    def checkpoint(self):  # submitit calls this on the time-limit / pre-emption signal
        import submitit

        # The run folder is the checkpoint: the requeued job resumes from the last finished epoch.
        return submitit.helpers.DelayedSubmission(SlurmTask(self.spec))


class SlurmExecutor:
    """One SLURM job per run through submitit; polls the run folders and ``squeue`` until all are done."""

    name = "slurm"

    def __init__(self, settings: SlurmSettings, poll_s: float = 10.0, log: Callable[[str], None] = print) -> None:
        self.settings, self.poll_s, self.log = settings, poll_s, log

    def _executor(self, folder: Path, name: str, dependency: str | None):
        import submitit

        s = self.settings
        ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm", slurm_max_num_timeout=s.max_requeues)
        extra = {"dependency": f"afterok:{dependency}"} if dependency else {}
        params = {"name": name, "timeout_min": s.timeout_min, "cpus_per_task": s.cpus_per_task,
                  "slurm_additional_parameters": extra}
        if s.gpus_per_node:
            params["gpus_per_node"] = s.gpus_per_node
        if s.mem_gb:
            params["mem_gb"] = s.mem_gb
        for key, value in (("slurm_partition", s.partition), ("slurm_account", s.account), ("slurm_qos", s.qos)):
            if value:
                params[key] = value
        ex.update_parameters(**params)
        return ex

    def submit(self, specs: list[JobSpec]) -> dict[str, str]:
        """Submit what is not done and not already queued; returns {run id: SLURM job id} of live jobs."""

        recorded = {s.run_id: job_record(RunDir(Path(s.runs_root) / s.run_id)) for s in specs}
        known = [r["job_id"] for r in recorded.values() if r.get("executor") == "slurm" and r.get("job_id")]
        live = squeue_states(known)
        jobs: dict[str, str] = {}
        for spec in specs:
            run = RunDir(Path(spec.runs_root) / spec.run_id)
            if run.finished and is_certified(run, spec.certify_settings()):
                continue
            rec = recorded[spec.run_id]
            if rec.get("executor") == "slurm" and str(rec.get("job_id")) in live:
                jobs[spec.run_id] = str(rec["job_id"])   # attach: queued or running already
                continue
            spec = replace(spec, executor=self.name, threads=self.settings.cpus_per_task)
            ex = self._executor(run.path / "slurm", spec.run_id, jobs.get(spec.teacher or ""))
            job = ex.submit(SlurmTask(spec))
            update_job_record(run, executor="slurm", job_id=str(job.job_id), state="submitted", submitted=now(),
                              error=None)
            jobs[spec.run_id] = str(job.job_id)
            self.log(f"  submitted {spec.run_id} as SLURM job {job.job_id}"
                     + (f" (after job {jobs[spec.teacher]})" if spec.teacher in jobs else ""))
        return jobs

    def execute(self, specs: list[JobSpec], on_done: OnDone) -> list[Outcome]:
        jobs = self.submit(specs)
        outcomes, failed = [], set()
        remaining = {s.run_id: s for s in specs}
        while remaining:
            live = squeue_states(list(jobs.values()))
            for rid, spec in list(remaining.items()):
                run, settings = RunDir(Path(spec.runs_root) / rid), spec.certify_settings()
                if run.finished and is_certified(run, settings):
                    df = certify_run(run, settings, log=self.log)  # reads the records; no work
                    out = Outcome(spec, JobResult(rid, summarize(df), 0.0, 0.0))
                elif spec.teacher in failed:
                    out = Outcome(spec, error=f"not run: its teacher {spec.teacher} failed")
                    if rid in jobs and jobs[rid] in live:
                        subprocess.run(["scancel", jobs[rid]], capture_output=True, timeout=60)
                elif rid in jobs and jobs[rid] not in live:
                    out = Outcome(spec, error=f"SLURM job {jobs[rid]} ended without finishing the run "
                                              f"({_why(run)})")
                else:
                    continue
                del remaining[rid]
                if not out.ok:
                    failed.add(rid)
                outcomes.append(out)
                on_done(out)
            if remaining:
                time.sleep(self.poll_s)
        return outcomes


def _why(run) -> str:
    """The failure recorded in a run's job.json, or the last line of its SLURM log."""

    rec = job_record(run)
    if rec.get("error"):
        return rec["error"].splitlines()[-1]
    logs = sorted((run.path / "slurm").glob("*_log.err"), key=lambda p: p.stat().st_mtime)
    if logs:
        lines = [ln for ln in logs[-1].read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1][-300:]
    return "cancelled, killed or lost; see its log under " + str(run.path / "slurm")


def check_counts(workers: int | None, threads: int | None) -> None:
    """Refuse a worker or thread count below 1 in one line (torch's own error is a traceback, and 0
    workers would silently mean one per core)."""
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers}: the local executor needs at least 1 worker process; give a "
                          f"positive number, or leave --workers out for one per CPU core ({os.cpu_count()} here)")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads {threads}: a run needs at least 1 CPU thread; give a positive number, or "
                          f"leave --threads out for the default (cores / workers)")


def make_executor(name: str, *, workers: int | None = None, threads: int | None = None,
                  slurm: SlurmSettings | None = None,
                  poll_s: float = 10.0, log: Callable[[str], None] = print):
    """The executor called ``name`` (see :data:`EXECUTORS`); a worker or thread count below 1 is refused
    (ConfigError) before anything runs: ``None`` is the default, never 0."""
    check_counts(workers, threads)
    if name == "inline":
        return InlineExecutor(threads, log)
    if name == "local":
        return LocalExecutor((os.cpu_count() or 1) if workers is None else workers, threads, log)
    if name == "slurm":
        return SlurmExecutor(slurm or SlurmSettings(), poll_s, log)
    raise ValueError(f"unknown executor {name!r}; known: {', '.join(EXECUTORS)}")
