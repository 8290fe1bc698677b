"""A run folder, the unit of work: its files, atomic writes, checkpoints and provenance.

``runs/<run_id>/`` holds everything about one run:

  config.json         the resolved RunConfig
  checkpoint.pt       latest end-of-epoch state (model, optimiser, epoch, RNG), + .sha256 sidecar
  checkpoint.prev.pt  the one before it (fallback when the latest is corrupted)
  metrics.jsonl       one JSON line per finished epoch
  manifest.json       provenance; ``status: finished`` marks a run that is never trained again
  certify-<key>.csv / .json  per-sample certification records and their settings and timings (one
                      pair per certification settings, <key> a hash of them)

Every file is written through a temporary name and a rename, so a reader (or a crash) never sees a
partial file.
"""

from __future__ import annotations

import errno as E
import hashlib
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.config.settings import REPO, RUNS, RunConfig
from harness.data import get_info
from harness.models import build_model


class DiskWriteError(RuntimeError):
    """A file could not be written (a full disk, a quota, a read-only folder). The file it was to replace
    is intact; the message names the file and the fix. It stops the whole invocation: every other run
    would fail in the same way."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def write_error(path: Path, e: OSError) -> DiskWriteError:
    """The :class:`DiskWriteError` of an ``OSError`` met while writing ``path``: the file, the cause, the fix."""
    if e.errno in (E.ENOSPC, E.EDQUOT):
        fix = f"free space on the disk that holds {path.parent} (df -h {path.parent})"
    elif e.errno in (E.EACCES, E.EPERM, E.EROFS):
        fix = f"make {path.parent} writable or point the command elsewhere (--runs / --results / --plots)"
    else:
        fix = "check the disk"
    return DiskWriteError(f"cannot write {path}: {e.strerror or e} (errno {e.errno}); {fix}, then run the same "
                          f"command again: the previous version of the file is intact and finished work is kept",
                          e.errno)


def _write_temporary(path: Path, data: bytes) -> Path:
    """``data`` in a synced temporary file beside ``path`` (removed again if anything fails); its name."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        tmp.unlink(missing_ok=True)  # never leave a partial file behind
        if isinstance(e, OSError):
            raise write_error(path, e) from e
        raise
    return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so no reader sees a partial file.

    An ``OSError`` (ENOSPC above all) becomes a :class:`DiskWriteError` naming ``path`` and the fix;
    ``path`` then still holds its previous content.
    """
    tmp = _write_temporary(path, data)
    try:
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from e


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write_bytes` whose writer died (a SIGKILL mid-write
    leaves one; the file it was writing was never replaced, so nothing partial is visible)."""
    removed = []
    for tmp in folder.glob(".*.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[-1].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running process. A zombie is not: a killed worker stays one until its new
    parent (init, or a container's PID 1 that may be slow to reap) collects it, and it writes nothing."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): signal 0 said it exists
    return stat[stat.rindex(")") + 2:][:1] not in ("Z", "X")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    import torchvision

    try:
        from importlib.metadata import version
        lirpa = version("auto-lirpa")
    except Exception:  # noqa: BLE001 - provenance only
        lirpa = None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "auto_LiRPA": lirpa}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunDir:
    """Paths of one run (and its config, read and validated at most once per object)."""

    path: Path
    _config: RunConfig | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, cfg: RunConfig, runs_root: Path | None = None) -> "RunDir":
        """The folder of ``cfg``'s run; ``cfg`` (already validated) is what :meth:`read_config` returns."""
        return cls((runs_root or RUNS) / cfg.run_id, cfg)

    config = property(lambda self: self.path / "config.json")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    previous = property(lambda self: self.path / "checkpoint.prev.pt")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    manifest = property(lambda self: self.path / "manifest.json")

    def read_manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest.read_text()) if self.manifest.exists() else {}

    @property
    def finished(self) -> bool:
        return self.read_manifest().get("status") == "finished"

    def read_config(self) -> RunConfig:
        """The run's config: validated from ``config.json`` on first use, then kept."""
        if self._config is None:
            self._config = RunConfig.from_dict(json.loads(self.config.read_text()), source=str(self.config))
        return self._config

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_checkpoint(run: RunDir, state: dict[str, Any]) -> None:
    """Atomically replace the latest checkpoint, keeping the previous one as a fallback.

    Both new files (checkpoint and checksum) are written in full before anything is renamed, so a write
    that fails (a full disk) leaves the latest and previous checkpoints as they were.
    """
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    sidecar = run.checkpoint.with_suffix(".pt.sha256")
    new = _write_temporary(run.checkpoint, data)
    try:
        new_sum = _write_temporary(sidecar, (hashlib.sha256(data).hexdigest() + "\n").encode())
    except BaseException:
        new.unlink(missing_ok=True)
        raise
    # Renames only from here on: they need no space.
    if run.checkpoint.exists():
        os.replace(run.checkpoint, run.previous)
        if sidecar.exists():
            os.replace(sidecar, run.previous.with_suffix(".pt.sha256"))
    os.replace(new, run.checkpoint)
    os.replace(new_sum, sidecar)


def _load_verified(path: Path) -> dict[str, Any]:
    sidecar = path.with_suffix(".pt.sha256")
    if not sidecar.exists():
        raise ValueError("no checksum sidecar")
    if _sha256(path) != sidecar.read_text().strip():
        raise ValueError("checksum mismatch (corrupted or truncated)")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(run: RunDir, log=print) -> dict[str, Any] | None:
    """The newest good checkpoint, or None. A bad one is reported and set aside, never used."""
    for path in (run.checkpoint, run.previous):
        if not path.exists():
            continue
        try:
            return _load_verified(path)
        except Exception as e:  # noqa: BLE001 - any failure to read means "do not use"
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            os.replace(path, aside)
            sidecar = path.with_suffix(".pt.sha256")
            if sidecar.exists():
                os.replace(sidecar, aside.with_name(aside.name + ".sha256"))
            log(f"warning: checkpoint {path} is unusable ({e}); moved to {aside.name}, falling back")
    return None


def load_model(run: RunDir, device: torch.device | str = "cpu") -> nn.Module:
    """The final model of a finished run, in eval mode."""
    cfg = run.read_config()
    state = load_checkpoint(run)
    if state is None or int(state.get("epoch", cfg.epochs)) < cfg.epochs:
        # a fallback to the previous checkpoint is not the final model
        raise FileNotFoundError(f"run {run.path.name} has no usable checkpoint of its last epoch; run the same "
                                f"command again to train it again (from its last good epoch)")
    model = model_for(cfg)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def model_for(cfg: RunConfig) -> nn.Module:
    info = get_info(cfg.dataset)
    return build_model(cfg.arch, info.in_shape, info.num_classes, info.mean, info.std, cfg.width)


# ---- claims: one worker per run ------------------------------------------------------------------

class RunClaimed(RuntimeError):
    """Another live process holds the run (its ``job.json`` says which)."""


def job_record(run: RunDir) -> dict[str, Any]:
    """The run's ``job.json``: which executor and job last claimed it, and how that ended."""
    path = run.path / "job.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}


def update_job_record(run: RunDir, **fields: Any) -> None:
    run.path.mkdir(parents=True, exist_ok=True)
    write_json(run.path / "job.json", {**job_record(run), **fields})


def is_locked(run: RunDir) -> bool:
    """Whether a live process on this machine holds the run's lock (a worker is on it now)."""
    import fcntl

    lock = run.path / ".lock"
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


class claim:
    """Context manager: hold the run's lock while working on it, recording the job in ``job.json``.

    The lock is an ``flock`` on ``runs/<id>/.lock``: the kernel releases it when the process dies,
    however it dies, so a run whose worker was killed is free for the next invocation, and two workers
    (two invocations, two executors) never train or certify the same run at once. ``wait``: block until
    the holder finishes (then the caller re-checks what is left to do) instead of raising RunClaimed.
    """

    def __init__(self, run: RunDir, wait: bool = True, **job: Any) -> None:
        self.run, self.wait, self.job = run, wait, job

    def __enter__(self) -> "claim":
        import fcntl

        self.run.path.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.run.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(self.fd)
            holder = job_record(self.run)
            raise RunClaimed(f"run {self.run.path.name} is being worked on by {describe_job(holder)}") from None
        remove_stale_temporaries(self.run.path)
        update_job_record(self.run, **self.job, state="running", pid=os.getpid(), host=platform.node(),
                          started=now(), error=None)
        return self

    def __exit__(self, kind, value, tb) -> None:
        import fcntl

        try:
            if kind is None:
                update_job_record(self.run, state="done", ended=now())
            else:
                try:
                    update_job_record(self.run, state="failed", ended=now(),
                                      error=f"{kind.__name__}: {value}"[:2000])
                except DiskWriteError:
                    pass  # a full disk: the error on its way out names the file that failed first
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def describe_job(rec: dict[str, Any]) -> str:
    """``slurm job 42 on node1`` / ``local worker pid 123 on host``, from a job record."""
    if not rec:
        return "an unknown process"
    where = f" on {rec['host']}" if rec.get("host") else ""
    if rec.get("executor") == "slurm" and rec.get("job_id"):
        return f"slurm job {rec['job_id']}{where}"
    return f"{rec.get('executor', 'a')} worker pid {rec.get('pid', '?')}{where}"
