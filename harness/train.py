"""The shared training loop, run directories, atomic checkpoints and exact resume.

A run lives in ``runs/<run_id>/``:
  config.json      the resolved RunConfig
  checkpoint.pt    latest end-of-epoch state (model, optimiser, epoch, RNG), + .sha256 sidecar
  checkpoint.prev.pt  the one before it (fallback when the latest is corrupted)
  metrics.jsonl    one JSON line per finished epoch
  manifest.json    provenance; ``status: finished`` marks a run that is never trained again
The loop knows no method by name: it asks ``harness.methods`` for a loss.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from harness.attacks import pgd_robust
from harness.bounds.ibp import ibp_bounds
from harness.bounds.spec import input_box, spec_matrix
from harness.config import RUNS, REPO, ConfigError, RunConfig
from harness.methods import METHODS, Batch, make_method
from harness.models import build_model, frozen_batch_stats, ibp_init
from harness.schedules import eps_at, lr_at


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


# ---- small utilities ------------------------------------------------------------------------------

def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; ``cpu``/``cuda`` are taken as asked (error if unavailable)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device; use --device cpu or auto")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so no reader sees a partial file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a partial file behind
        raise


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


# ---- run directories -----------------------------------------------------------------------------

@dataclass
class RunDir:
    """Paths of one run."""

    path: Path

    @classmethod
    def of(cls, cfg: RunConfig, runs_root: Path | None = None) -> "RunDir":
        return cls((runs_root or RUNS) / cfg.run_id)

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
        return RunConfig.from_dict(json.loads(self.config.read_text()))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_checkpoint(run: RunDir, state: dict[str, Any]) -> None:
    """Atomically replace the latest checkpoint, keeping the previous one as a fallback."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    if run.checkpoint.exists():
        os.replace(run.checkpoint, run.previous)
        sidecar = run.checkpoint.with_suffix(".pt.sha256")
        if sidecar.exists():
            os.replace(sidecar, run.previous.with_suffix(".pt.sha256"))
    atomic_write_bytes(run.checkpoint, data)
    atomic_write_text(run.checkpoint.with_suffix(".pt.sha256"), hashlib.sha256(data).hexdigest() + "\n")


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
    if state is None:
        raise FileNotFoundError(f"run {run.path.name} has no usable checkpoint; train it again")
    model = model_for(cfg)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def model_for(cfg: RunConfig) -> nn.Module:
    from harness.data import get_info

    info = get_info(cfg.dataset)
    return build_model(cfg.arch, info.in_shape, info.num_classes, info.mean, info.std, cfg.width)


# ---- teacher ---------------------------------------------------------------------------------------

def check_teacher(cfg: RunConfig, runs_root: Path) -> RunDir | None:
    """For a method that needs a teacher: the teacher's run, checked to exist, be finished and match."""
    if not METHODS[cfg.method].needs_teacher:
        return None
    run = RunDir(runs_root / str(cfg.teacher))
    if not run.config.exists():
        raise ConfigError(f"teacher run {cfg.teacher!r} does not exist under {runs_root}; train the pgd run first")
    if not run.finished:
        raise ConfigError(f"teacher run {cfg.teacher!r} is not finished; train it first")
    t = run.read_config()
    if t.method != "pgd":
        raise ConfigError(f"teacher run {cfg.teacher!r} is a {t.method} run; AD-CERT needs a pgd teacher")
    for key in ("dataset", "eps", "arch", "width"):
        if getattr(t, key) != getattr(cfg, key):
            raise ConfigError(f"teacher run {cfg.teacher!r} has {key}={getattr(t, key)!r} but the student has "
                              f"{key}={getattr(cfg, key)!r}; they must match")
    return run


# ---- evaluation on the held-out slice --------------------------------------------------------------

@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, pgd_steps: int,
             batch_size: int = 500) -> dict[str, float]:
    """Clean, PGD and own-IBP-certified accuracy (%) on (x, y) at ``eps``, model in eval mode."""
    was = model.training
    model.eval()
    clean = pgd = cert = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        logits = model(xb)
        clean += int((logits.argmax(1) == yb).sum())
        pgd += int(pgd_robust(model, xb, yb, eps, steps=pgd_steps, restarts=1).sum())
        lo, hi = input_box(xb, eps)
        lower = ibp_bounds(model, lo, hi, spec_matrix(yb, logits.shape[1], dtype=xb.dtype)).lower
        cert += int((lower.min(1).values > 0).sum())  # monitoring only; reported numbers come from certify
    model.train(was)
    n = max(len(x), 1)
    return {"val_clean": 100 * clean / n, "val_pgd": 100 * pgd / n, "val_ibp_cert": 100 * cert / n}


# ---- the loop --------------------------------------------------------------------------------------

def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def train(cfg: RunConfig, *, device: str = "auto", runs_root: Path | None = None, progress: bool | None = None,
          log=print) -> RunDir:
    """Train ``cfg`` to completion, resuming from its last good checkpoint; a finished run is skipped."""
    from harness.data import get_info, load_split, make_loader

    cfg.validate()
    runs_root = runs_root or RUNS
    dev = resolve_device(device)
    run = RunDir.of(cfg, runs_root)
    teacher_run = check_teacher(cfg, runs_root)  # before anything is written
    if run.finished:
        log(f"[{cfg.run_id}] finished earlier; nothing to do")
        return run
    method = make_method(cfg.method, cfg.params)
    info = get_info(cfg.dataset)
    images, labels = load_split(cfg.dataset, "train")
    n_val = min(cfg.val_size, len(images) // 10)
    val_x, val_y = images[len(images) - n_val:], labels[len(labels) - n_val:]
    tr_x, tr_y = images[:len(images) - n_val], labels[:len(labels) - n_val]
    if cfg.train_subset:
        tr_x, tr_y = tr_x[:cfg.train_subset], tr_y[:cfg.train_subset]
    val_x, val_y = val_x.to(dev), val_y.to(dev)
    steps_per_epoch = math.ceil(len(tr_x) / cfg.batch_size)

    run.path.mkdir(parents=True, exist_ok=True)
    write_json(run.config, cfg.to_dict())

    torch.manual_seed(cfg.seed)
    model = model_for(cfg)
    if cfg.init == "ibp":
        ibp_init(model)
    teacher = None
    if teacher_run is not None:
        teacher = load_model(teacher_run, dev)
        for p in teacher.parameters():
            p.requires_grad_(False)
        if cfg.params.get("init_from_teacher"):
            model.load_state_dict(teacher.state_dict())
    model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    manifest = run.read_manifest() or {"run_id": cfg.run_id, "started": now(), "train_time_s": 0.0}
    start_epoch = 0
    state = load_checkpoint(run, log)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], dev)
        start_epoch = int(state["epoch"])
        manifest["train_time_s"] = float(state["train_time_s"])
        log(f"[{cfg.run_id}] resuming after epoch {start_epoch}/{cfg.epochs}")
        # metrics lines of epochs after the checkpoint (crash between the two writes) are dropped
        kept = [m for m in run.read_metrics() if m["epoch"] <= start_epoch]
        atomic_write_text(run.metrics, "".join(json.dumps(m) + "\n" for m in kept))
    elif run.metrics.exists():
        run.metrics.unlink()
    manifest.update({"status": "running", "device": str(dev), "seed": cfg.seed, "versions": versions(),
                     "git_commit": git_commit(), "host": platform.node(), "method": cfg.method})
    if teacher_run is not None:
        tm = teacher_run.read_manifest()
        manifest.update({"teacher": cfg.teacher, "teacher_train_time_s": tm.get("train_time_s")})
    write_json(run.manifest, manifest)

    show = sys.stderr.isatty() if progress is None else progress
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        lr = lr_at(epoch, cfg.lr, cfg.lr_milestones, cfg.lr_decay)
        for g in opt.param_groups:
            g["lr"] = lr
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # shuffling depends on (seed, epoch) only
        loader = make_loader(tr_x, tr_y, cfg.batch_size, train=True, augment=info.augment, generator=gen,
                             device=dev)
        model.train()
        sums: dict[str, float] = {}
        correct = seen = 0
        bar = tqdm(loader, total=steps_per_epoch, desc=f"{cfg.method} {cfg.dataset} e{epoch + 1}/{cfg.epochs}",
                   disable=not show, leave=False, dynamic_ncols=True)
        eps = 0.0
        for i, (x, y) in enumerate(bar):
            step = epoch * steps_per_epoch + i
            eps = eps_at(step, steps_per_epoch, cfg.train_eps, cfg.eps_ramp_start, cfg.eps_ramp_length,
                         cfg.eps_schedule)
            with frozen_batch_stats(model):
                out = method(Batch(model, x, y, eps, cfg.train_eps, teacher))
            loss = out.loss + cfg.l1 * sum(m.weight.abs().sum() for m in model.modules()
                                           if isinstance(m, (nn.Conv2d, nn.Linear))) if cfg.l1 else out.loss
            if not torch.isfinite(loss):
                raise TrainingError(f"[{cfg.run_id}] loss became {loss.item()} at epoch {epoch + 1} step {i}; "
                                    f"stopped; the checkpoint of epoch {epoch} is kept. Lower lr or check the data.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sums["loss"] = sums.get("loss", 0.0) + loss.item() * len(y)
            for k, v in out.terms.items():
                sums[k] = sums.get(k, 0.0) + v * len(y)
            correct += int((out.clean_logits.argmax(1) == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}", acc=f"{100 * correct / seen:.1f}", eps=f"{eps:.3g}")
        bar.close()
        epoch_time = time.perf_counter() - t0
        manifest["train_time_s"] += epoch_time
        row = {"epoch": epoch + 1, "eps": eps, "lr": lr, "train_acc": 100 * correct / max(seen, 1),
               **{k: v / max(seen, 1) for k, v in sums.items()}, "epoch_time_s": epoch_time}
        row.update(evaluate(model, val_x, val_y, eps, cfg.val_pgd_steps))
        row["val_eps"] = eps
        save_checkpoint(run, {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                              "rng": _rng_state(dev), "train_time_s": manifest["train_time_s"]})
        with open(run.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")
        log(f"[{cfg.run_id}] epoch {epoch + 1}/{cfg.epochs} loss {row['loss']:.4f} train acc {row['train_acc']:.1f}% "
            f"| val clean {row['val_clean']:.1f}% pgd {row['val_pgd']:.1f}% ibp-cert {row['val_ibp_cert']:.1f}% "
            f"@eps {eps:.4g} | {epoch_time:.1f}s")
    manifest.update({"status": "finished", "finished": now()})
    write_json(run.manifest, manifest)
    return run
