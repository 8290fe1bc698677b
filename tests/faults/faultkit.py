"""Helpers of the fault-injection tests: a small profile, its folders, the processes of a pool.

Kept apart from ``conftest.py`` so that the test modules can import them by name.
"""

from __future__ import annotations

import builtins
import errno
import fnmatch
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from harness.certification.run import certify_paths
from harness.config.profile import load_profile
from harness.rundir import RunDir, job_record

REPO = Path(__file__).resolve().parents[2]

#: Two methods, two epochs (so that a run killed in training has a checkpoint to resume from), a
#: certification of a few seconds per run: the whole profile takes about 10 s inline on 2 cores.
PROFILE = """[profile]
name = "faults"
description = "fault-injection tests: two short runs"
seeds = [0]

[defaults]
arch = "cnn_small"
epochs = 2
batch_size = 64
lr = 1e-3
train_subset = 2048
val_size = 100
val_pgd_steps = 2

[certify]
n_test = 200
crown_samples = 5
pgd_steps = 5
pgd_restarts = 1
batch_size = 100
crown_batch_size = 5
eps_sweep = [1.0]
n_sweep = 100

[[settings]]
dataset = "mnist"
eps = 0.1
methods = ["standard", "ibp"]
"""


def write_profile(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "faults.toml"
    path.write_text(PROFILE)
    return path


def dirs_in(root: Path) -> dict[str, Path]:
    """The keyword arguments of ``reproduce`` that put everything under ``root``."""
    return {"runs_root": root / "runs", "results_dir": root / "results", "plots_dir": root / "plots"}


def cli_args(profile: Path, root: Path, *extra: str) -> list[str]:
    """``reproduce`` of ``profile`` into ``root`` on the CPU with one thread per run (the reference's)."""
    d = dirs_in(root)
    return ["reproduce", "--profile", str(profile), "--device", "cpu", "--threads", "1", "--runs", str(d["runs_root"]),
            "--results", str(d["results_dir"]), "--plots", str(d["plots_dir"]), *extra]


def start_cli(args: list[str]) -> subprocess.Popen:
    """``python -m harness ARGS`` in its own session (so that a failed test can still end all of it)."""
    return subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_default_sigint)


def _default_sigint() -> None:
    """In the child, before exec: SIGINT's default action, as a terminal gives the command it runs. A test
    run started in the background of a non-interactive shell (``make test &``) inherits SIGINT *ignored*,
    and an ignored signal stays ignored across exec, so without this the driver would never see Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def runs(profile: Path, root: Path) -> list[RunDir]:
    return [RunDir.of(cfg, dirs_in(root)["runs_root"]) for cfg in load_profile(profile).runs()]


def records(profile: Path, run: RunDir) -> Path:
    """The run's per-sample certification records under the profile's settings."""
    return certify_paths(run, load_profile(profile).certify)[0]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not: it holds no memory and no lock)."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the pool's workers and resource tracker)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[1] == pid:
                out.append(int(entry.name))
    return out


def spawned_workers(pid: int) -> list[int]:
    """The children of ``pid`` that are multiprocessing spawn workers (not its resource tracker)."""
    out = []
    for child in children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(child)
        except OSError:
            pass
    return out


def wait_until(what: str, pred: Callable[[], bool], proc: subprocess.Popen | None = None,
               timeout: float = 240.0, every: float = 0.02) -> None:
    """Poll ``pred`` until it holds; fail if ``proc`` ends first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the command ended (rc {proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what} in {timeout:.0f} s")
        time.sleep(every)


def training(rs: list[RunDir]) -> bool:
    """Some run is between two epochs: its first checkpoint is written, it is not finished."""
    return any(r.checkpoint.exists() and not r.finished and job_record(r).get("state") == "running" for r in rs)


def certifying(profile: Path, rs: list[RunDir]) -> bool:
    """Some run is trained and its certification is under way (no records yet)."""
    return any(r.finished and not records(profile, r).exists() and job_record(r).get("state") == "running"
               for r in rs)


def end_session(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left of the command's session (its own process group), whatever happened."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def temporaries(root: Path) -> list[Path]:
    """Temporary files of atomic writes left under ``root``."""
    return [p for p in root.rglob(".*") if ".tmp" in p.name]


#: A line of torch's C++ logging (e.g. "W1207 14:18:08.700000 123 .../cpp_extension.py:183] No CUDA runtime"),
#: which some installations print on import: not the harness's to control.
TORCH_LOG = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d")


def messages(stderr: str) -> list[str]:
    """The non-empty lines of a command's stderr, torch's own import-time log lines left out."""
    return [ln for ln in stderr.strip().splitlines() if ln.strip() and not TORCH_LOG.match(ln)]


class FullDisk:
    """``open`` for :mod:`harness.rundir`, whose atomic writes all go through it, as on a full disk.

    A write of a file whose final name matches ``pattern`` (fnmatch) fails with ENOSPC, after ``after``
    such writes succeed: the temporary file is created and half of the data reaches it, as when a disk
    fills mid-write. Reads and every other file pass through untouched. ``hits``: the names it failed.
    """

    def __init__(self, pattern: str, after: int = 0) -> None:
        self.pattern, self.after, self.seen, self.hits = pattern, after, 0, []

    def __call__(self, file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        name = Path(file).name
        final = name[1:].rsplit(".tmp", 1)[0] if name.startswith(".") and ".tmp" in name else name
        if "w" in mode and fnmatch.fnmatch(final, self.pattern):
            if self.seen >= self.after:
                self.hits.append(final)
                return _Filling(f)
            self.seen += 1
        return f


class _Filling:
    """A file that takes half of what is written to it, then fails with ENOSPC."""

    def __init__(self, f) -> None:
        self.f = f

    def write(self, data) -> int:
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative name: content)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
