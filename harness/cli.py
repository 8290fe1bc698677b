"""Command line: ``python -m harness <command> ...`` (the Makefile calls these)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

USAGE_ERROR = 2


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return USAGE_ERROR


def _opt(path: str | None) -> Path | None:
    return Path(path) if path else None


def cmd_data(args: argparse.Namespace) -> int:
    from harness.data import main_data

    return main_data(args.dataset or ["mnist", "fashion-mnist"])


def cmd_train(args: argparse.Namespace) -> int:
    from harness.config.profile import load_profile
    from harness.config.settings import load_run_config
    from harness.training.loop import train

    if args.profile:
        configs = load_profile(args.profile).runs()
    elif args.config:
        configs = [load_run_config(Path(args.config))]
    else:
        return _err("give a run config file (TOML or JSON with RunConfig fields) or --profile NAME")
    for cfg in configs:
        run = train(cfg, device=args.device, runs_root=_opt(args.runs))
        print(run.path)
    return 0


def cmd_certify(args: argparse.Namespace) -> int:
    from harness.certification.records import summarize
    from harness.certification.run import certify_run
    from harness.config.profile import load_profile
    from harness.config.settings import RUNS
    from harness.rundir import RunDir

    path = Path(args.run)
    run = RunDir(path if path.is_dir() else (Path(args.runs) if args.runs else RUNS) / args.run)
    if not run.config.exists():
        return _err(f"no run {args.run!r} (looked for {run.config})")
    settings = load_profile(args.profile).certify_for(run.path.name)  # its setting's, if the profile plans it
    df = certify_run(run, settings, device=args.device, force=args.force)
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in summarize(df).items()}))
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    from harness.config.profile import load_profile
    from harness.report.fidelity import build_comparison
    from harness.report.tables import build_tables

    profiles = [load_profile(p) for p in args.profile] if args.profile else None
    build_tables(profiles, runs_root=_opt(args.runs), results_dir=_opt(args.results))
    for profile in profiles if profiles is not None else [load_profile("fidelity")]:
        build_comparison(profile, runs_root=_opt(args.runs), results_dir=_opt(args.results),
                         write_empty=profiles is not None)
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from harness.config.profile import load_profile
    from harness.report.plots import build_figures

    profiles = [load_profile(p) for p in args.profile] if args.profile else None
    build_figures(profiles, runs_root=_opt(args.runs), results_dir=_opt(args.results), plots_dir=_opt(args.plots))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "bounds":
        from harness.bench.bounds import bench_bounds

        bench_bounds(device=args.device, repeats=args.repeats)
    else:
        from harness.bench.train import bench_train

        bench_train(device=args.device, repeats=args.repeats)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from harness.config.settings import RUNS
    from harness.exchange.export import export_run
    from harness.rundir import RunDir

    path = Path(args.run)
    run = RunDir(path if path.is_dir() else (Path(args.runs) if args.runs else RUNS) / args.run)
    if not run.config.exists():
        return _err(f"no run {args.run!r} (looked for {run.config})")
    try:
        out = export_run(run, Path(args.out), n=args.n, timeout_s=args.timeout, undecided=args.undecided,
                         certify_key=args.certify_key)
    except ValueError as e:
        return _err(str(e))
    print(out)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from harness.exchange.instances import Instance, read_instances
    from harness.verification.api import VerifySettings
    from harness.verification.benchmark import compare_official, load_instances, run_instances, write_provenance

    if args.instances:
        if args.onnx or args.vnnlib:
            return _err("give either NET.onnx PROP.vnnlib or --instances instances.csv, not both")
        instances = read_instances(args.instances)
    elif args.onnx and args.vnnlib:
        instances = [Instance(Path(args.onnx), Path(args.vnnlib), args.timeout)]
    else:
        return _err("give NET.onnx PROP.vnnlib, or --instances instances.csv (a VNN-COMP benchmark folder)")
    from harness.orchestration.jobs import set_threads

    if args.jobs < 1:
        return _err(f"--jobs must be at least 1, got {args.jobs}")
    loaded = load_instances(instances)  # every file checked before anything is written
    if args.limit:
        loaded = loaded[:args.limit]
    settings = VerifySettings(time_limit_s=args.timeout, autoattack=not args.no_autoattack)
    out = Path(args.out)
    # VNN-COMP's setting and the target: one core per instance (also the deterministic one); the
    # caller's thread count is restored (main() also runs in-process, e.g. from the tests)
    previous = set_threads(args.threads)
    t0 = time.perf_counter()
    try:
        rows = run_instances(loaded, out, settings=settings, timeout_cap=args.timeout_cap, jobs=args.jobs)
    finally:
        set_threads(previous)
    write_provenance(out, benchmark=Path(args.instances).parent.name if args.instances else Path(args.onnx).name,
                     instances=len(rows), wall_s=time.perf_counter() - t0, settings=settings,
                     timeout_cap=args.timeout_cap, jobs=args.jobs, threads=args.threads)
    if args.official:
        counts = compare_official(rows, Path(args.official), out)
        print(json.dumps(counts))
    return 0


def _slurm_overrides(args: argparse.Namespace) -> dict:
    keys = ("partition", "account", "qos", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min")
    return {k: getattr(args, f"slurm_{k}") for k in keys if getattr(args, f"slurm_{k}", None) is not None}


def auto_executor(device: str) -> str:
    """``--executor auto``: one process on a GPU (its runs share the device), else a worker per core with
    one torch thread each, so that the numbers do not depend on how many cores the machine has."""
    from harness.runtime.device import resolve_device

    return "inline" if resolve_device(device).type == "cuda" else "local"


def cmd_reproduce(args: argparse.Namespace) -> int:
    from harness.orchestration.pipeline import reproduce

    executor = auto_executor(args.device) if args.executor == "auto" else args.executor
    return reproduce(args.profile, device=args.device, runs_root=_opt(args.runs), results_dir=_opt(args.results),
                     plots_dir=_opt(args.plots), executor=executor, workers=args.workers, threads=args.threads,
                     poll_s=args.poll, slurm_overrides=_slurm_overrides(args), train_only=args.train_only)


def cmd_check(args: argparse.Namespace) -> int:
    from harness.config.profile import json_schemas, load_any
    from harness.config.settings import RUNS

    if args.schema:
        print(json.dumps(json_schemas(), indent=2))
        return 0
    if not args.file:
        return _err("give a profile (name or path) or a run config file to check, or --schema")
    kind, obj = load_any(args.file)
    if kind == "run config":
        print(f"{args.file}: a valid run config; run id {obj.run_id}")
        for k, v in obj.to_dict().items():
            print(f"  {k} = {v!r}")
        return 0
    from harness.orchestration.pipeline import describe_plan

    runs_root = _opt(args.runs) or RUNS
    plan = obj.plan()
    print(f"{args.file}: a valid profile {obj.name!r}: {len(plan)} runs ({obj.description})")
    for line in describe_plan(obj, runs_root, plan):
        print(line)
    if not args.no_estimate:
        from harness.orchestration.eta import estimate, fmt_duration
        from harness.orchestration.pipeline import plan_state
        from harness.runtime.device import resolve_device

        state = plan_state(obj, runs_root)
        todo = [p.cfg for p in plan if state[p.run_id] == "todo"]
        dev = resolve_device(args.device)
        seconds = estimate(todo, dev, runs_root, log=print)
        print(f"expected training time of the {len(todo)} run(s) still to train: about "
              f"{fmt_duration(sum(seconds.values()))} on this machine ({dev}, one run at a time)")
    return 0


def cmd_gpucheck(args: argparse.Namespace) -> int:
    from harness.orchestration.gpucheck import gpucheck

    return gpucheck(args.device, _opt(args.out), tiny=args.tiny, epochs=args.epochs)


def cmd_status(args: argparse.Namespace) -> int:
    from harness.orchestration.status import print_status

    return print_status(args.profile, runs_root=_opt(args.runs), lines=args.lines)


def build_parser() -> argparse.ArgumentParser:
    from harness.orchestration.executors import EXECUTORS

    p = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="obtain and verify datasets")
    d.add_argument("--dataset", action="append", help="mnist, fashion-mnist or cifar10 (repeatable)")
    d.set_defaults(fn=cmd_data)

    def common(sp, device=True, outputs=False):
        if device:
            sp.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
        sp.add_argument("--runs", help="runs folder (default: runs/)")
        if outputs:
            sp.add_argument("--results", help="tables folder (default: results/); each profile gets a subfolder")
            sp.add_argument("--plots", help="figures folder (default: plots/); each profile gets a subfolder")

    t = sub.add_parser("train", help="train (or resume) one run config, or every run of a profile")
    t.add_argument("config", nargs="?", help="run config file (.toml or .json)")
    t.add_argument("--profile", help="train every run of a profile (a name under benchmarks/ or a path) instead")
    common(t)
    t.set_defaults(fn=cmd_train)

    c = sub.add_parser("certify", help="certify a finished run (per-sample records)")
    c.add_argument("run", help="run id (under runs/) or run directory")
    c.add_argument("--profile", default="cpu", help="profile whose [certify] settings to use")
    c.add_argument("--force", action="store_true", help="recompute even if records exist")
    common(c)
    c.set_defaults(fn=cmd_certify)

    tb = sub.add_parser("tables", help="rebuild results/<profile>/*.csv from stored records")
    tb.add_argument("--profile", action="append", help="these profiles, names or paths (default: all with results)")
    common(tb, device=False, outputs=True)
    tb.set_defaults(fn=cmd_tables)

    f = sub.add_parser("figures", help="rebuild plots/<profile>/*.png from stored records")
    f.add_argument("--profile", action="append", help="these profiles, names or paths (default: all with tables)")
    common(f, device=False, outputs=True)
    f.set_defaults(fn=cmd_figures)

    b = sub.add_parser("bench", help="speed benchmarks (medians, one process)")
    b.add_argument("what", choices=["bounds", "train"])
    b.add_argument("--device", default="auto")
    b.add_argument("--repeats", type=int, default=7)
    b.set_defaults(fn=cmd_bench)

    r = sub.add_parser("reproduce", help="data, training, certification, tables and figures of a profile")
    r.add_argument("--profile", default="cpu", help="smoke, cpu, tradeoff, paper, fidelity (benchmarks/<name>.toml) or a path")
    r.add_argument("--executor", default="inline", choices=(*EXECUTORS, "auto"),
                   help="inline (this process), local (worker processes), slurm (one job per run, submitit) or "
                        "auto (inline on a GPU, else local; make reproduce's default)")
    r.add_argument("--workers", type=int, help="local executor: worker processes (default: CPU cores)")
    r.add_argument("--threads", type=int, help="CPU threads per run (default: cores / workers; inline: torch's)")
    r.add_argument("--train-only", action="store_true", help="train what is not trained; certify nothing yet")
    r.add_argument("--poll", type=float, default=10.0, help="slurm executor: seconds between checks of the jobs")
    for key, kind, what in (("partition", str, "partition"), ("account", str, "account"), ("qos", str, "QOS"),
                            ("gpus-per-node", int, "GPUs per job"), ("cpus-per-task", int, "CPUs per job"),
                            ("mem-gb", float, "memory per job (GB)"), ("timeout-min", int, "time limit per job")):
        r.add_argument(f"--slurm-{key}", type=kind, help=f"slurm executor: {what} (overrides the profile's [slurm])")
    common(r, outputs=True)
    r.set_defaults(fn=cmd_reproduce)

    ck = sub.add_parser("check", help="validate a profile or run config without running it; print the plan")
    ck.add_argument("file", nargs="?", help="a profile (name or path) or a run config file")
    ck.add_argument("--schema", action="store_true", help="print the JSON schema of both file formats")
    ck.add_argument("--no-estimate", action="store_true", help="do not time training steps for the estimate")
    common(ck)
    ck.set_defaults(fn=cmd_check)

    g = sub.add_parser("gpucheck", help="the GPU path in one command (paper slice, CUDA tests, benchmarks): a report")
    g.add_argument("--device", default="cuda", help="cuda (default), or cpu with --tiny to try the script")
    g.add_argument("--out", help="report folder (default: runs/gpucheck)")
    g.add_argument("--tiny", action="store_true", help="a small model and a slice of the data (any device)")
    g.add_argument("--epochs", type=int, default=2, help="epochs of the paper slice (default 2)")
    g.set_defaults(fn=cmd_gpucheck)

    ex = sub.add_parser("export", help="a run as ONNX + VNN-LIB + instances.csv (exports/<run-id>/)")
    ex.add_argument("run", help="run id (under runs/) or run directory")
    ex.add_argument("--n", type=int, default=10, help="test samples to write properties for (the first N)")
    ex.add_argument("--undecided", action="store_true",
                    help="the first N samples the run's certification left undecided instead (hard cases)")
    ex.add_argument("--certify-key", help="which certification's records --undecided reads (if the run has several)")
    ex.add_argument("--timeout", type=float, default=60.0, help="timeout per instance in instances.csv (s)")
    ex.add_argument("--out", default="exports", help="exports folder (default: exports/)")
    common(ex, device=False)
    ex.set_defaults(fn=cmd_export)

    vf = sub.add_parser("verify", help="verify ONNX networks against VNN-LIB properties (one, or a benchmark)")
    vf.add_argument("onnx", nargs="?", help="NET.onnx")
    vf.add_argument("vnnlib", nargs="?", help="PROP.vnnlib")
    vf.add_argument("--instances", help="a VNN-COMP instances.csv (onnx,vnnlib,timeout; paths relative to it)")
    vf.add_argument("--timeout", type=float, default=60.0, help="seconds per instance given on the command line")
    vf.add_argument("--timeout-cap", type=float, help="cap every instance's timeout at this many seconds")
    vf.add_argument("--limit", type=int, help="only the first N instances")
    vf.add_argument("--no-autoattack", action="store_true", help="skip the AutoAttack stage")
    vf.add_argument("--threads", type=int, default=1, help="torch threads (default 1; HiGHS always runs on one)")
    vf.add_argument("--jobs", type=int, default=1,
                    help="instances verified at a time, each in its own process on one thread (default 1)")
    vf.add_argument("--official", help="official.csv to compare with (writes comparison.csv and summary.csv)")
    vf.add_argument("--out", default="verify-out", help="folder for results.csv and counterexamples")
    vf.set_defaults(fn=cmd_verify)

    st = sub.add_parser("status", help="each run of a profile: pending, running (where), trained, certified, failed")
    st.add_argument("--profile", default="cpu", help="a profile name or path")
    st.add_argument("--lines", type=int, default=3, help="log lines shown for a failed run")
    common(st, device=False)
    st.set_defaults(fn=cmd_status)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input gives a one-line error and a non-zero exit status."""
    from harness.config.constraints import ConfigError

    args = build_parser().parse_args(argv)
    try:
        check_options(args)
        return args.fn(args)
    except ConfigError as e:
        return _err(str(e))
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `| head`): nothing left to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # noqa: BLE001 - known failure kinds get a clear message, not a traceback
        if isinstance(e, _known_errors()):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise


def check_options(args: argparse.Namespace) -> None:
    """Refuse option values argparse lets through, in one line, before anything runs: a folder option
    naming a file, a worker or thread count below 1."""
    from harness.config.constraints import ConfigError
    from harness.orchestration.executors import check_counts

    for opt in ("runs", "results", "plots", "out"):
        value = getattr(args, opt, None)
        if value and Path(value).exists() and not Path(value).is_dir():
            raise ConfigError(f"--{opt} {value}: is a file, expected a folder; give a folder (created if missing)")
    check_counts(getattr(args, "workers", None), getattr(args, "threads", None))


def _known_errors() -> tuple[type, ...]:
    from harness.certification.records import InvariantError
    from harness.data import ChecksumError, DatasetUnavailableError, UnknownDatasetError
    from harness.rundir import DiskWriteError, RunClaimed
    from harness.training.loop import TrainingError

    return (TrainingError, FileNotFoundError, InvariantError, ChecksumError, DatasetUnavailableError,
            UnknownDatasetError, RunClaimed, ValueError, DiskWriteError)
