"""Command line: ``python -m harness <command> ...`` (the Makefile calls these)."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

USAGE_ERROR = 2


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return USAGE_ERROR


def cmd_data(args: argparse.Namespace) -> int:
    from harness.data import main_data

    return main_data(args.dataset or ["mnist", "fashion-mnist"])


def _load_run_config(path: Path):
    from harness.config import ConfigError, RunConfig

    if not path.exists():
        raise ConfigError(f"run config file {path} does not exist")
    text = path.read_text()
    try:
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: cannot parse: {e}") from None
    return RunConfig.from_dict(raw)


def cmd_train(args: argparse.Namespace) -> int:
    from harness.config import load_profile
    from harness.train import train

    if args.profile:
        configs = load_profile(args.profile).runs()
    elif args.config:
        configs = [_load_run_config(Path(args.config))]
    else:
        return _err("give a run config file (TOML or JSON with RunConfig fields) or --profile NAME")
    runs_root = Path(args.runs) if args.runs else None
    for cfg in configs:
        run = train(cfg, device=args.device, runs_root=runs_root)
        print(run.path)
    return 0


def cmd_certify(args: argparse.Namespace) -> int:
    from harness.certify import CertifySettings, certify_run, summarize
    from harness.config import RUNS, load_profile
    from harness.train import RunDir

    path = Path(args.run)
    run = RunDir(path if path.is_dir() else (Path(args.runs) if args.runs else RUNS) / args.run)
    if not run.config.exists():
        return _err(f"no run {args.run!r} (looked for {run.config})")
    settings = CertifySettings.from_dict(load_profile(args.profile).certify)
    df = certify_run(run, settings, device=args.device, force=args.force)
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in summarize(df).items()}))
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    from harness.tables import build_tables

    build_tables(args.profile or None, runs_root=_opt(args.runs), results_dir=_opt(args.results))
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from harness.plots import build_figures

    build_figures(runs_root=_opt(args.runs), results_dir=_opt(args.results), plots_dir=_opt(args.plots))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "bounds":
        from harness.bench.bounds import bench_bounds

        bench_bounds(device=args.device, repeats=args.repeats)
    else:
        from harness.bench.train import bench_train

        bench_train(device=args.device, repeats=args.repeats)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from harness.pipeline import reproduce

    return reproduce(args.profile, device=args.device, runs_root=_opt(args.runs), results_dir=_opt(args.results),
                     plots_dir=_opt(args.plots))


def _opt(path: str | None) -> Path | None:
    return Path(path) if path else None


def build_parser() -> argparse.ArgumentParser:
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
            sp.add_argument("--results", help="tables folder (default: results/)")
            sp.add_argument("--plots", help="figures folder (default: plots/)")

    t = sub.add_parser("train", help="train (or resume) one run config, or every run of a profile")
    t.add_argument("config", nargs="?", help="run config file (.toml or .json)")
    t.add_argument("--profile", help="train every run of benchmarks/<profile>.toml instead")
    common(t)
    t.set_defaults(fn=cmd_train)

    c = sub.add_parser("certify", help="certify a finished run (per-sample records)")
    c.add_argument("run", help="run id (under runs/) or run directory")
    c.add_argument("--profile", default="cpu", help="profile whose [certify] settings to use")
    c.add_argument("--force", action="store_true", help="recompute even if records exist")
    common(c)
    c.set_defaults(fn=cmd_certify)

    tb = sub.add_parser("tables", help="rebuild results/*.csv from stored records")
    tb.add_argument("--profile", action="append", help="limit to these profiles (default: all with results)")
    common(tb, device=False, outputs=True)
    tb.set_defaults(fn=cmd_tables)

    f = sub.add_parser("figures", help="rebuild plots/*.png from stored records")
    common(f, device=False, outputs=True)
    f.set_defaults(fn=cmd_figures)

    b = sub.add_parser("bench", help="speed benchmarks (medians, one process)")
    b.add_argument("what", choices=["bounds", "train"])
    b.add_argument("--device", default="auto")
    b.add_argument("--repeats", type=int, default=7)
    b.set_defaults(fn=cmd_bench)

    r = sub.add_parser("reproduce", help="data, training, certification, tables and figures of a profile")
    r.add_argument("--profile", default="cpu", help="smoke, cpu or paper (benchmarks/<name>.toml)")
    common(r, outputs=True)
    r.set_defaults(fn=cmd_reproduce)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input gives a one-line error and a non-zero exit status."""
    from harness.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as e:
        return _err(str(e))
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - known failure kinds get a clear message, not a traceback
        if isinstance(e, _known_errors()):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise


def _known_errors() -> tuple[type, ...]:
    from harness.certify import InvariantError
    from harness.data import ChecksumError, DatasetUnavailableError, UnknownDatasetError
    from harness.train import TrainingError

    return (TrainingError, FileNotFoundError, InvariantError, ChecksumError, DatasetUnavailableError,
            UnknownDatasetError, ValueError)
