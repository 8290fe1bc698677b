"""The shared training loop, with exact resume from a run folder's checkpoints.

The loop knows no method by name: it asks ``harness.training.methods`` for a loss. Run folders, checkpoints and
provenance are :mod:`harness.rundir`'s; devices and their arithmetic :mod:`harness.runtime.device`'s.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from harness.attacks import pgd_robust
from harness.bounds.ibp import ibp_bounds
from harness.bounds.spec import spec_matrix
from harness.config.constraints import ConfigError
from harness.config.settings import RUNS, RunConfig
from harness.data import get_info, load_split, make_loader
from harness.models import frozen_batch_stats, ibp_init
from harness.rundir import (
    RunDir,
    atomic_write_text,
    git_commit,
    load_checkpoint,
    load_model,
    model_for,
    now,
    save_checkpoint,
    versions,
    write_json,
)
from harness.runtime.device import (
    device_name,
    exact_arithmetic,
    peak_memory_gib,
    reset_peak_memory,
    resolve_device,
    training_arithmetic,
)
from harness.schedules import eps_at, lr_at
from harness.threat_model import input_box
from harness.training.methods import METHODS, TERMS, Batch, make_method
from harness.training.published import import_checkpoint


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


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
        raise ConfigError(f"teacher run {cfg.teacher!r} is a {t.method} run; {cfg.method} needs a pgd teacher")
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


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The model on ``device``; on CUDA in channels-last memory order, which tensor-core convolutions
    prefer (the values and the state dict are unchanged; only the layout differs)."""
    model = model.to(device)
    if device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    return model


def _to_layout(x: torch.Tensor, model_device: torch.device) -> torch.Tensor:
    if model_device.type == "cuda" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


class _EpochSums:
    """Running sums of an epoch's loss terms and accuracy, kept on the device.

    Reading a CUDA tensor's value waits for the GPU; doing it several times per step kept the GPU
    idle between small kernels. The sums are read once per epoch (and every ``postfix_every`` steps
    when a progress bar is shown). On the CPU reading costs nothing, so the non-finite-loss check
    stays immediate there; on CUDA it is checked at the end of the epoch, before any checkpoint.
    """

    postfix_every = 25

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.terms: dict[str, torch.Tensor] = {}
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = 0
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)

    def add(self, step: int, loss: torch.Tensor, terms: dict[str, torch.Tensor], logits: torch.Tensor,
            y: torch.Tensor) -> None:
        n = len(y)
        finite = torch.isfinite(loss.detach())
        if self.device.type != "cuda" and not bool(finite):
            self.first_bad_step.fill_(step)
        else:
            self.first_bad_step = torch.where((self.first_bad_step < 0) & ~finite,
                                              torch.tensor(step, device=self.device), self.first_bad_step)
        self.loss += loss.detach().double() * n
        for k, v in terms.items():
            self.terms[k] = self.terms.get(k, 0) + v.double() * n
        self.correct += (logits.argmax(1) == y).sum()
        self.seen += n

    def bad_step(self) -> int | None:
        step = int(self.first_bad_step)
        return None if step < 0 else step

    def row(self) -> dict[str, float | None]:
        n = max(self.seen, 1)
        out: dict[str, float | None] = {"loss": float(self.loss) / n, "train_acc": 100 * int(self.correct) / n}
        out.update({k: float(self.terms[k]) / n if k in self.terms else None for k in TERMS})
        return out


def train(cfg: RunConfig, *, device: str = "auto", runs_root: Path | None = None, progress: bool | None = None,
          log=print) -> RunDir:
    """Train ``cfg`` to completion, resuming from its last good checkpoint; a finished run is skipped.

    ``cfg`` is validated already: every RunConfig comes from :meth:`RunConfig.from_dict` (a run config
    file, a profile's plan, a job's spec or a run folder's config.json).
    """
    runs_root = runs_root or RUNS
    if cfg.checkpoint is not None:  # a published model: loaded into a finished run folder, not trained
        return import_checkpoint(cfg, runs_root, log=log)
    dev = resolve_device(device)
    run = RunDir.of(cfg, runs_root)
    teacher_run = check_teacher(cfg, runs_root)  # before anything is written
    if run.finished:
        # The final checkpoint is the run's result: a truncated or corrupted one is set aside (named in
        # the warning) and the run trains again from its last good epoch, instead of failing later.
        final = load_checkpoint(run, log)
        if final is not None and int(final["epoch"]) >= cfg.epochs:
            log(f"[{cfg.run_id}] finished earlier; nothing to do")
            return run
        log(f"[{cfg.run_id}] finished earlier, but its final checkpoint is unusable; training it again")
    method = make_method(cfg.method, cfg.params)
    info = get_info(cfg.dataset)
    images, labels = load_split(cfg.dataset, "train")
    n_val = min(cfg.val_size, len(images) // 10)
    val_x, val_y = images[len(images) - n_val:], labels[len(labels) - n_val:]
    tr_x, tr_y = images[:len(images) - n_val], labels[:len(labels) - n_val]
    if cfg.train_subset:
        tr_x, tr_y = tr_x[:cfg.train_subset], tr_y[:cfg.train_subset]
    # Data lives on the training device for the whole run: no host-to-device copy per batch.
    tr_x, tr_y, val_x, val_y = (t.to(dev) for t in (tr_x, tr_y, val_x, val_y))
    steps_per_epoch = math.ceil(len(tr_x) / cfg.batch_size)

    run.path.mkdir(parents=True, exist_ok=True)
    write_json(run.config, cfg.to_dict())

    torch.manual_seed(cfg.seed)
    model = model_for(cfg)
    if cfg.init == "ibp":
        ibp_init(model)
    teacher = None
    if teacher_run is not None:
        # Built without touching the global generator (a fresh model draws its default init), so a
        # student's random stream (its attacks' starts) is that of a teacher-free run of the same seed.
        with torch.random.fork_rng(devices=[]):
            teacher = prepare_model(load_model(teacher_run, dev), dev)
        for p in teacher.parameters():
            p.requires_grad_(False)
        if cfg.params.get("init_from_teacher"):
            model.load_state_dict(teacher.state_dict())
    model = prepare_model(model, dev)
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
    manifest.update({"status": "running", "device": str(dev), "device_name": device_name(dev), "seed": cfg.seed,
                     "versions": versions(), "git_commit": git_commit(), "host": platform.node(),
                     "method": cfg.method, "cpu_threads": torch.get_num_threads()})
    if teacher_run is not None:
        tm = teacher_run.read_manifest()
        manifest.update({"teacher": cfg.teacher, "teacher_train_time_s": tm.get("train_time_s")})
    write_json(run.manifest, manifest)

    reset_peak_memory(dev)
    show = sys.stderr.isatty() if progress is None else progress
    l1_layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))] if cfg.l1 else []
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        lr = lr_at(epoch, cfg.lr, cfg.lr_milestones, cfg.lr_decay)
        for g in opt.param_groups:
            g["lr"] = lr
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # shuffling depends on (seed, epoch) only
        loader = make_loader(tr_x, tr_y, cfg.batch_size, train=True, augment=info.augment, generator=gen,
                             device=dev)
        model.train()
        sums = _EpochSums(dev)
        bar = tqdm(loader, total=steps_per_epoch, desc=f"{cfg.method} {cfg.dataset} e{epoch + 1}/{cfg.epochs}",
                   disable=not show, leave=False, dynamic_ncols=True)
        eps = 0.0
        with training_arithmetic(dev):
            for i, (x, y) in enumerate(bar):
                step = epoch * steps_per_epoch + i
                eps = eps_at(step, steps_per_epoch, cfg.train_eps, cfg.eps_ramp_start, cfg.eps_ramp_length,
                             cfg.eps_schedule)
                x = _to_layout(x, dev)
                with frozen_batch_stats(model):
                    out = method(Batch(model, x, y, eps, cfg.train_eps, teacher))
                loss = out.loss + cfg.l1 * sum(m.weight.abs().sum() for m in l1_layers) if cfg.l1 else out.loss
                sums.add(i, loss, out.terms, out.clean_logits, y)
                if dev.type != "cuda" and sums.bad_step() is not None:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                if show and i % sums.postfix_every == 0:
                    r = sums.row()
                    bar.set_postfix(loss=f"{r['loss']:.3f}", acc=f"{r['train_acc']:.1f}", eps=f"{eps:.3g}")
        bar.close()
        bad = sums.bad_step()
        if bad is not None:
            raise TrainingError(f"[{cfg.run_id}] the loss became non-finite (nan or inf) at epoch {epoch + 1} step "
                                f"{bad}; stopped; the checkpoint of epoch {epoch} is kept. Lower lr or check the data.")
        epoch_time = time.perf_counter() - t0
        manifest["train_time_s"] += epoch_time
        row = {"epoch": epoch + 1, "eps": eps, "lr": lr, **sums.row(), "epoch_time_s": epoch_time}
        t1 = time.perf_counter()
        with exact_arithmetic(dev):
            row.update(evaluate(model, val_x, val_y, eps, cfg.val_pgd_steps))
        row.update({"val_eps": eps, "val_time_s": time.perf_counter() - t1})
        save_checkpoint(run, {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                              "rng": _rng_state(dev), "train_time_s": manifest["train_time_s"]})
        # rewritten whole, not appended: a full disk must not leave half a line for the resume to trip on
        previous = run.metrics.read_text() if run.metrics.exists() else ""
        atomic_write_text(run.metrics, previous + json.dumps(row) + "\n")
        log(f"[{cfg.run_id}] epoch {epoch + 1}/{cfg.epochs} loss {row['loss']:.4f} train acc {row['train_acc']:.1f}% "
            f"| val clean {row['val_clean']:.1f}% pgd {row['val_pgd']:.1f}% ibp-cert {row['val_ibp_cert']:.1f}% "
            f"@eps {eps:.4g} | {epoch_time:.1f}s")
    manifest.update({"status": "finished", "finished": now(), "peak_memory_gib": peak_memory_gib(dev)})
    write_json(run.manifest, manifest)
    return run
