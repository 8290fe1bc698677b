"""How long a plan's training will take on the device in use, and ETAs while it runs.

The cost of a run is its number of optimiser steps times the time of one step of *its method* on
*this device*, plus its validation passes. A step's time comes, in this order of preference, from
epochs recorded by earlier runs with the same cost-relevant config on the same device (their
``metrics.jsonl``), or from a few real training steps timed now on synthetic data of the run's shape.
Nothing is calibrated on one device and applied to another.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from harness.config.settings import RunConfig
from harness.data import get_info
from harness.models import frozen_batch_stats
from harness.orchestration.jobs import set_threads
from harness.rundir import model_for
from harness.runtime.device import device_name, training_arithmetic
from harness.training.loop import evaluate, prepare_model
from harness.training.methods import METHODS, Batch, make_method


def fmt_duration(seconds: float) -> str:
    """``1h02m``, ``4m07s`` or ``12s``."""
    seconds = max(float(seconds), 0.0)
    h, rest = divmod(int(round(seconds)), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def train_images(cfg: RunConfig) -> int:
    """Number of training images a run uses per epoch (as :func:`harness.training.loop.train` splits them)."""

    n_train = get_info(cfg.dataset).train_size
    n = n_train - min(cfg.val_size, n_train // 10)
    return min(cfg.train_subset or n, n)


def steps_per_epoch(cfg: RunConfig) -> int:
    return math.ceil(train_images(cfg) / cfg.batch_size)


def cost_key(cfg: RunConfig) -> str:
    """The config fields a training step's time depends on (not the seed, eps or schedule)."""

    return json.dumps([cfg.method, cfg.params, get_info(cfg.dataset).in_shape, cfg.arch, cfg.width, cfg.batch_size,
                       cfg.val_size, cfg.val_pgd_steps], sort_keys=True)


@dataclass
class StepCost:
    step_s: float       # one optimiser step
    epoch_extra_s: float  # validation and bookkeeping per epoch
    source: str         # "recorded" or "measured"


def recorded_cost(cfg: RunConfig, device: torch.device, runs_root: Path) -> StepCost | None:
    """Median step time of earlier epochs of runs with the same cost key on a device of the same name."""
    key, name = cost_key(cfg), device_name(device)
    steps, extras = [], []
    for manifest in runs_root.glob("*/manifest.json"):
        try:
            m = json.loads(manifest.read_text())
            if m.get("device_name") != name:
                continue
            other = RunConfig.from_dict(json.loads((manifest.parent / "config.json").read_text()))
        except Exception:  # noqa: BLE001 - an unreadable or foreign run folder is just not evidence
            continue
        if cost_key(other) != key:
            continue
        spe = steps_per_epoch(other)
        metrics = manifest.parent / "metrics.jsonl"
        for line in metrics.read_text().splitlines() if metrics.exists() else []:
            row = json.loads(line)
            steps.append(row["epoch_time_s"] / spe)
            extras.append(row.get("val_time_s", 0.0))
    if not steps:
        return None
    return StepCost(statistics.median(steps), statistics.median(extras), "recorded")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_cost(cfg: RunConfig, device: torch.device, steps: int = 2) -> StepCost:
    """Time ``steps`` real optimiser steps of the run's method (after one warm-up) on synthetic data.

    The step is timed after the eps ramp (regularisers off); the validation pass is timed once on a
    slice of the run's validation size.
    """

    info = get_info(cfg.dataset)
    gen = torch.Generator().manual_seed(0)
    model = prepare_model(model_for(cfg), device)
    teacher = prepare_model(model_for(cfg), device).eval() if METHODS[cfg.method].needs_teacher else None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    method = make_method(cfg.method, cfg.params)
    x = torch.rand((cfg.batch_size, *info.in_shape), generator=gen).to(device)
    y = torch.randint(0, info.num_classes, (cfg.batch_size,), generator=gen).to(device)
    times = []
    with training_arithmetic(device):
        for i in range(steps + 1):
            _sync(device)
            t = time.perf_counter()
            with frozen_batch_stats(model):
                out = method(Batch(model, x, y, cfg.train_eps, cfg.train_eps, teacher))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            _sync(device)
            if i:
                times.append(time.perf_counter() - t)
    n_val = min(cfg.val_size, 500)
    extra = 0.0
    if n_val:
        _sync(device)
        t = time.perf_counter()
        evaluate(model, x[:1].expand(n_val, *info.in_shape).contiguous(), y[:1].expand(n_val).contiguous(),
                 cfg.train_eps, cfg.val_pgd_steps)
        _sync(device)
        extra = (time.perf_counter() - t) * min(cfg.val_size, train_images(cfg) // 9 + 1) / n_val
    return StepCost(statistics.median(times), extra, "measured")


def estimate(cfgs: list[RunConfig], device: torch.device, runs_root: Path, threads: int | None = None,
             log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Expected training seconds of each run on ``device`` (whole runs; resumed ones count fully).

    ``threads``: the CPU threads each run will have (as the executor sets them); steps are timed so.
    """

    costs: dict[str, StepCost] = {}
    out = {}
    previous = set_threads(threads)
    try:
        for cfg in cfgs:
            if cfg.checkpoint is not None:  # a published checkpoint is loaded, not trained
                out[cfg.run_id] = 0.0
                continue
            key = cost_key(cfg)
            if key not in costs:
                costs[key] = recorded_cost(cfg, device, runs_root) or measured_cost(cfg, device)
            c = costs[key]
            out[cfg.run_id] = cfg.epochs * (steps_per_epoch(cfg) * c.step_s + c.epoch_extra_s)
    finally:
        set_threads(previous)
    if log is not None and costs:
        kinds = sorted({c.source for c in costs.values()})
        log(f"  (step times {' and '.join(kinds)} on {device_name(device)}, for {len(costs)} kinds of run)")
    return out


class Progress:
    """ETA of a set of jobs, each training (expected seconds, 0 when already trained) and certifying.

    Training's remainder is scaled by the pace of the trainings so far (measured against their
    expectation); certification's by the mean certification time so far. Both are divided by the number
    of workers that run jobs side by side.
    """

    def __init__(self, train_expected: dict[str, float], certify: set[str] | frozenset = frozenset(),
                 workers: int = 1) -> None:
        self.train = dict(train_expected)
        self.certify = set(certify)
        self.workers = max(1, workers)
        self.expected_done = self.actual_done = 0.0
        self.cert_seconds: list[float] = []
        self.start = time.perf_counter()

    def finish(self, key: str, train_s: float = 0.0, certify_s: float = 0.0) -> None:
        expected = self.train.pop(key, 0.0)
        if expected > 0 and train_s > 0:
            self.expected_done += expected
            self.actual_done += train_s
        if key in self.certify:
            self.certify.discard(key)
            if certify_s > 0:
                self.cert_seconds.append(certify_s)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def eta(self) -> float:
        """Seconds left (0 for certification until one has been measured)."""
        pace = self.actual_done / self.expected_done if self.expected_done > 0 else 1.0
        train_left = sum(self.train.values()) * pace
        cert_left = len(self.certify) * sum(self.cert_seconds) / len(self.cert_seconds) if self.cert_seconds else 0.0
        return (train_left + cert_left) / self.workers
