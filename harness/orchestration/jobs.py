"""The unit of work of every executor: train (or resume) one run, then certify it.

A :class:`JobSpec` is self-contained plain data (the resolved run config and certification settings,
not a profile path), so it pickles to a worker process or a SLURM job and means the same there.
:func:`run_job` is idempotent: what is already done is skipped, an interrupted run resumes from its
last epoch checkpoint, and the run's claim (:class:`harness.rundir.claim`) keeps two workers off the
same run.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from harness.certification.records import summarize
from harness.certification.run import certify_run
from harness.config.profile import PlannedRun
from harness.config.settings import CertifySettings, RunConfig
from harness.rundir import RunDir, claim, write_error
from harness.training.loop import train


@dataclass(frozen=True)
class JobSpec:
    run_id: str
    config: dict[str, Any]          # RunConfig.to_dict()
    certify: dict[str, Any] | None  # CertifySettings.to_dict(); None: train only
    runs_root: str
    device: str = "auto"
    threads: int | None = None      # CPU threads of torch in this job (None: leave as is)
    executor: str = "inline"
    teacher: str | None = None      # run id of the job this one waits for

    @classmethod
    def of(cls, planned: PlannedRun, certify: CertifySettings, runs_root: Path, **kw: Any) -> "JobSpec":
        return cls(run_id=planned.run_id, config=planned.cfg.to_dict(), certify=certify.to_dict(),
                   runs_root=str(runs_root), teacher=planned.cfg.teacher, **kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def certify_settings(self) -> CertifySettings | None:
        """The certification settings this job applies (None: it trains only)."""
        return CertifySettings.from_dict(self.certify, source=f"job {self.run_id}") if self.certify else None


@dataclass
class JobResult:
    run_id: str
    summary: dict[str, float] | None   # None: trained only
    train_s: float
    certify_s: float


def set_threads(threads: int | None) -> int:
    """Fix torch's CPU threads for this process (results on the CPU depend on the thread count);
    returns the previous count."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    return previous


def run_job(spec: JobSpec, log: Callable[[str], None] = print) -> JobResult:
    """Train and certify one run, holding its claim; returns its summary."""
    previous = set_threads(spec.threads)
    try:
        return _run_job(spec, log)
    finally:
        set_threads(previous)  # an inline job must not change the threads of the caller's process


def _run_job(spec: JobSpec, log: Callable[[str], None]) -> JobResult:
    cfg = RunConfig.from_dict(spec.config, source=f"job {spec.run_id}")
    settings = spec.certify_settings()
    root = Path(spec.runs_root)
    run = RunDir.of(cfg, root)
    job_id = os.environ.get("SLURM_JOB_ID")
    with claim(run, wait=True, executor=spec.executor, job_id=job_id, threads=spec.threads):
        t = time.perf_counter()
        train(cfg, device=spec.device, runs_root=root, log=log)
        t_train = time.perf_counter() - t
        if settings is None:
            return JobResult(spec.run_id, None, t_train, 0.0)
        df = certify_run(run, settings, device=spec.device, log=log)
        t_cert = time.perf_counter() - t - t_train
    return JobResult(spec.run_id, summarize(df), t_train, t_cert)


def file_logger(path: Path) -> Callable[[str], None]:
    """A ``log`` function that appends lines to ``path`` (a worker's per-run log)."""
    def log(msg: str) -> None:
        try:
            with open(path, "a") as f:
                f.write(msg + "\n")
        except OSError as e:  # a full disk: one line naming the log, not an errno from deep in a worker
            raise write_error(path, e) from e
    return log
