"""`reproduce`: data -> jobs (train, then certify, teachers first) -> tables -> figures.

Each run is certified as soon as it is trained, so a long profile yields records, and with
``make tables`` / ``make figures`` tables and plots, from whatever has finished. Everything already
done is skipped; an interrupted run resumes from its last epoch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from harness.certification.run import is_certified, set_aside_bad_records
from harness.config.constraints import ConfigError
from harness.config.profile import PlannedRun, Profile, load_profile
from harness.config.settings import RUNS
from harness.data import DatasetUnavailableError, ensure_dataset
from harness.orchestration.eta import Progress, estimate, fmt_duration
from harness.orchestration.executors import Outcome, make_executor
from harness.orchestration.jobs import JobSpec
from harness.report.fidelity import build_comparison
from harness.report.plots import build_figures
from harness.report.tables import build_tables
from harness.rundir import RunDir, is_locked
from harness.runtime.device import resolve_device


def plan_state(profile: Profile, runs_root: Path) -> dict[str, str]:
    """Per run id: ``certified`` (nothing to do), ``trained`` (certify only) or ``todo``."""

    out = {}
    for p in profile.plan():
        run = RunDir.of(p.cfg, runs_root)
        out[p.run_id] = ("certified" if is_certified(run, profile.certify_for(p)) else "trained") if run.finished \
            else "todo"
    return out


def available_datasets(profile: Profile, log: Callable[[str], None] = lambda _: None, *,
                       allow_download: bool = True) -> tuple[set[str], dict[str, str]]:
    """(datasets that are here, or could be fetched when ``allow_download``; {dataset: why not} for the others)."""

    ok, skipped = set(), {}
    for ds in dict.fromkeys(s.dataset for s in profile.settings):
        try:
            ensure_dataset(ds, allow_download=allow_download)
            ok.add(ds)
        except DatasetUnavailableError as e:
            skipped[ds] = str(e)
            log(f"SKIPPED {ds}: {e}")
    return ok, skipped


def reproduce(profile_name: str | Path | Profile, *, device: str = "auto", runs_root: Path | None = None,
              results_dir: Path | None = None, plots_dir: Path | None = None, executor: str = "inline",
              workers: int | None = None, threads: int | None = None, poll_s: float = 10.0,
              slurm_overrides: dict | None = None, train_only: bool = False, log=print) -> int:
    """Run a whole profile; returns 0 when every available run finished (skipped data is reported)."""
    from dataclasses import replace

    if train_only and executor == "slurm":

        raise ConfigError("--train-only works with the inline and local executors (a SLURM job trains and certifies)")
    runs_root = runs_root or RUNS
    profile: Profile = profile_name if isinstance(profile_name, Profile) else load_profile(profile_name)
    if slurm_overrides:
        profile = replace(profile, slurm=replace(profile.slurm, **slurm_overrides))
    log(f"profile {profile.name}: {profile.description}")
    available, skipped = available_datasets(profile, log)
    plan = [p for p in profile.plan() if p.cfg.dataset in available]
    for p in plan:  # here, so that the warning naming a truncated records file reaches the console
        run = RunDir.of(p.cfg, runs_root)
        if not is_locked(run):  # a live worker may be between writing the records and their metadata
            set_aside_bad_records(run, profile.certify_for(p), log)
    state = plan_state(profile, runs_root)
    todo = [p for p in plan if state[p.run_id] == "todo" or (state[p.run_id] == "trained" and not train_only)]
    to_train = [p for p in todo if state[p.run_id] == "todo"]
    n_skipped = len(profile.plan()) - len(plan)
    line = (f"{len(profile.plan())} runs in the plan, {n_skipped} skipped (data missing), "
            f"{len(plan) - len(todo)} done, {len(to_train)} to train, {len(todo) - len(to_train)} to certify")
    weights: dict[str, float] = {p.run_id: 0.0 for p in todo}
    ex = make_executor(executor, workers=workers, threads=threads, slurm=profile.slurm, poll_s=poll_s, log=log)
    n_workers = getattr(ex, "workers", 1)
    if executor != "slurm" and to_train:
        dev = resolve_device(device)
        per_run = estimate([p.cfg for p in to_train], dev, runs_root, threads=getattr(ex, "threads", None))
        weights.update(per_run)
        # runs in parallel share the machine: the wall time is about the total over the workers
        log(f"{line}; expected training time about {fmt_duration(sum(weights.values()) / n_workers)} on this machine "
            f"({_where(executor, n_workers, threads)}; + certification)")
    else:
        log(line)
    specs = [JobSpec.of(p, profile.certify_for(p), runs_root, device=device) for p in todo]
    if executor == "local":  # only where jobs share workers: inline runs the plan's order, SLURM queues all at once
        specs = schedule(specs, weights)
    if train_only:
        specs = [replace(s, certify=None) for s in specs]
    progress = Progress(weights, certify={s.run_id for s in specs if s.certify is not None}, workers=n_workers)
    counts = {"done": 0, "failed": 0}

    def on_done(out: Outcome) -> None:
        counts["done" if out.ok else "failed"] += 1
        r = out.result if out.ok else None
        progress.finish(out.spec.run_id, train_s=getattr(r, "train_s", 0.0) or 0.0,
                        certify_s=getattr(r, "certify_s", 0.0) or 0.0)
        n = counts["done"] + counts["failed"]
        head = f"[{n}/{len(specs)}] {out.spec.run_id}"
        if out.ok and out.result.summary is None:
            body = f"trained in {fmt_duration(out.result.train_s)}"
        elif out.ok:
            s, r = out.result.summary, out.result
            took = f"train {fmt_duration(r.train_s)}, certify {fmt_duration(r.certify_s)}; " if r.train_s or \
                r.certify_s else ""
            body = (f"{took}clean {s['clean_acc']:.1f}% PGD {s['pgd_acc']:.1f}% "
                    f"certified {s['cert_crown_ibp']:.1f}%")
        else:
            body = f"FAILED: {out.error}"
        tail = f" | {counts['failed']} failed" if counts["failed"] else ""
        log(f"{head}: {body}{tail} | elapsed {fmt_duration(progress.elapsed())}, ETA {fmt_duration(progress.eta())}")

    t0 = time.perf_counter()
    outcomes = ex.execute(specs, on_done) if specs else []
    if train_only:
        log(f"profile {profile.name}: trained; certification, tables and figures were left for a later run")
        return 1 if any(not o.ok for o in outcomes) else 0
    build_tables([profile], runs_root=runs_root, results_dir=results_dir, log=log)
    build_comparison(profile, runs_root=runs_root, results_dir=results_dir, log=log)
    build_figures([profile], results_dir=results_dir, plots_dir=plots_dir, runs_root=runs_root, log=log)
    for ds, why in skipped.items():
        log(f"note: {ds} settings were skipped: {why.splitlines()[0]}")
    failures = [o for o in outcomes if not o.ok]
    for o in failures:
        log(f"failed: {o.spec.run_id}: {o.error}")
    log(f"profile {profile.name} done in {fmt_duration(time.perf_counter() - t0)}"
        + (f"; {len(failures)} run(s) failed: run the same command again to retry them" if failures else ""))
    return 1 if failures else 0


def schedule(specs: list[JobSpec], expected_s: dict[str, float]) -> list[JobSpec]:
    """The order jobs start in: teachers first (their students wait for them), then the longest expected
    training first (``expected_s``: seconds per run id; a student's cost is its own). Longest first keeps
    the workers busy to the end instead of leaving one long job running alone; ties keep the plan's order."""
    teachers = {s.teacher for s in specs if s.teacher}
    ids = {s.run_id for s in specs}
    ranked = [s for _, s in sorted(enumerate(specs), key=lambda t: (
        t[1].run_id not in teachers, -expected_s.get(t[1].run_id, 0.0), t[0]))]
    out: list[JobSpec] = []
    placed: set[str] = set()
    while ranked:  # never a job before its teacher (the inline and SLURM executors rely on it)
        s = next(s for s in ranked if s.teacher not in ids or s.teacher in placed)
        ranked.remove(s)
        out.append(s)
        placed.add(s.run_id)
    return out


def _where(executor: str, workers: int | None, threads: int | None) -> str:
    if executor == "local":
        return f"local, {workers} workers"
    return f"{executor}{f', {threads} threads' if threads else ''}"


def describe_plan(profile: Profile, runs_root: Path, plan: list[PlannedRun] | None = None) -> list[str]:
    """One line per run of the plan: id, method, variant, teacher, and its state under ``runs_root``."""
    state = plan_state(profile, runs_root)
    lines = []
    for i, p in enumerate(plan or profile.plan(), 1):
        extra = f" [{p.variant}]" if p.variant else ""
        teacher = f" teacher={p.cfg.teacher}" if p.cfg.teacher else ""
        lines.append(f"{i:4d}. {p.run_id}  {p.cfg.method}{extra}{teacher}  ({state[p.run_id]})")
    return lines
