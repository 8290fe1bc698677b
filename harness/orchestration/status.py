"""``python -m harness status``: where each run of a profile stands, from its run folder alone.

pending (nothing yet) / queued or running (where: a SLURM job, or a local worker's pid and host) /
interrupted (its worker ended without finishing and without an error: killed, cancelled, timed out;
the next invocation resumes it) / failed (an error; with the last lines of its log) / trained (not
certified with the profile's current settings) / certified / skipped (its dataset is not on this
machine; ``reproduce`` would try to fetch it).
"""

from __future__ import annotations

from pathlib import Path

from harness.certification.run import is_certified
from harness.config.profile import load_profile
from harness.config.settings import RUNS
from harness.orchestration.executors import squeue_states
from harness.orchestration.pipeline import available_datasets
from harness.rundir import RunDir, describe_job, is_locked, job_record


def _tail(run_path: Path, lines: int) -> list[str]:
    logs = [run_path / "job.log"] + sorted((run_path / "slurm").glob("*_log.*"), key=lambda p: p.stat().st_mtime)
    logs = [p for p in logs if p.exists() and p.stat().st_size]
    if not logs:
        return []
    newest = max(logs, key=lambda p: p.stat().st_mtime)
    text = [ln for ln in newest.read_text(errors="replace").splitlines() if ln.strip()]
    return [f"      {newest.name}: {ln[-200:]}" for ln in text[-lines:]]


def run_status(run, certify) -> tuple[str, str]:
    """(state, detail) of one run folder."""

    rec = job_record(run)
    if run.finished and is_certified(run, certify):
        return "certified", ""
    if is_locked(run):
        return "running", describe_job(rec)
    if rec.get("executor") == "slurm" and rec.get("job_id"):
        try:
            live = squeue_states([str(rec["job_id"])])
        except (OSError, ValueError):
            live = {}
        if str(rec["job_id"]) in live:
            state, where = live[str(rec["job_id"])]
            return ("running" if state == "RUNNING" else "queued"), f"slurm job {rec['job_id']} {state} {where}"
    if rec.get("state") == "failed":
        return "failed", rec["error"].splitlines()[-1][:300] if rec.get("error") else "see its log"
    if run.finished:
        return "trained", "not certified with the profile's current settings"
    if run.checkpoint.exists() or rec.get("state") in ("running", "submitted", "interrupted"):
        epochs = len(run.read_metrics())
        why = f"its {describe_job(rec)} ended without finishing; " if rec else ""
        return "interrupted", f"{why}{epochs} epoch(s) done; the next invocation resumes it"
    return "pending", ""


def print_status(profile_name: str | Path, runs_root: Path | None = None, lines: int = 3) -> int:
    """Print one line per run and a count per state; returns 0."""

    profile = load_profile(profile_name)
    runs_root = runs_root or RUNS
    _, missing = available_datasets(profile, allow_download=False)  # status never downloads
    counts: dict[str, int] = {}
    for p in profile.plan():
        run = RunDir.of(p.cfg, runs_root)
        state, detail = run_status(run, profile.certify_for(p))
        if state == "pending" and p.cfg.dataset in missing:
            state, detail = "skipped", (f"no {p.cfg.dataset} data on this machine; `python -m harness data "
                                        f"--dataset {p.cfg.dataset}` fetches it or says where to put it")
        counts[state] = counts.get(state, 0) + 1
        variant = f" [{p.variant}]" if p.variant else ""
        print(f"{state:11s} {p.run_id}{variant}" + (f"  ({detail})" if detail else ""))
        if state == "failed":
            for ln in _tail(run.path, lines):
                print(ln)
    print("; ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0
