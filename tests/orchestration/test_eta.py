"""Expected training time from the device in use: recorded epochs first, else a few timed steps."""

from __future__ import annotations

import json

import pytest
import torch

from harness.config.profile import load_profile
from harness.config.settings import RunConfig
from harness.orchestration.eta import Progress, estimate, fmt_duration, recorded_cost, steps_per_epoch
from harness.orchestration.jobs import set_threads
from harness.rundir import RunDir


def test_recorded_epochs_of_the_same_kind_of_run_on_the_same_device_are_used(smoke_inline):
    root = smoke_inline.dirs["runs_root"]
    cfg = [c for c in load_profile("smoke").runs() if c.method == "ibp"][0]
    metrics = RunDir.of(cfg, root).read_metrics()
    previous = set_threads(1)  # the smoke runs were trained with one thread: "cpu x1"
    try:
        cost = recorded_cost(cfg, torch.device("cpu"), root)
        other_seed = RunConfig.from_dict({**cfg.to_dict(), "seed": 7})
        seconds = estimate([other_seed], torch.device("cpu"), root, threads=1)[other_seed.run_id]
    finally:
        set_threads(previous)
    assert cost is not None and cost.source == "recorded"
    assert cost.step_s == pytest.approx(metrics[0]["epoch_time_s"] / steps_per_epoch(cfg))
    assert seconds == pytest.approx(cfg.epochs * (steps_per_epoch(cfg) * cost.step_s + cost.epoch_extra_s))
    assert recorded_cost(cfg, torch.device("cpu"), root / "nowhere") is None


def test_without_records_a_few_steps_are_timed_on_the_device(tmp_path):
    cfg = RunConfig.from_dict({"dataset": "mnist", "eps": 0.1, "method": "pgd", "arch": "mlp", "width": 16,
                               "batch_size": 32, "epochs": 2, "train_subset": 320, "val_size": 50,
                               "val_pgd_steps": 2, "params": {"attack_steps": 2}})
    logs: list[str] = []
    seconds = estimate([cfg], torch.device("cpu"), tmp_path, log=logs.append)[cfg.run_id]
    assert 0 < seconds < 60 and "measured on cpu" in logs[0]
    assert json.dumps(logs)  # one summary line


def test_progress_eta_scales_the_remaining_work_by_the_pace_so_far():
    p = Progress({"a": 10.0, "b": 30.0, "c": 0.0}, certify={"a", "b", "c"})
    assert p.eta() == 40.0  # no certification measured yet
    p.finish("a", train_s=20.0, certify_s=5.0)  # twice as slow as expected; certification 5 s a job
    assert p.eta() == pytest.approx(2 * 30.0 + 2 * 5.0)
    p.finish("c", certify_s=15.0)  # certification only: the mean certification time becomes 10 s
    assert p.eta() == pytest.approx(60.0 + 10.0)
    two = Progress({"a": 10.0, "b": 30.0}, workers=2)  # side by side: half the wall time
    assert two.eta() == 20.0
    assert fmt_duration(3725) == "1h02m" and fmt_duration(247) == "4m07s" and fmt_duration(12.4) == "12s"
