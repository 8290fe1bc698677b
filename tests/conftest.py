"""Fixtures shared by several test modules."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class SmokeRun:
    dirs: dict[str, Path]
    logs: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _profile_tables(results: Path, profile: str) -> dict:
    """A profile's summary tables without their wall-time columns (which no two runs share)."""
    import pandas as pd

    from harness.report.tables import TIME_COLUMNS

    out = {}
    for name in ("summary", "summary_mean", "paper_comparison"):
        df = pd.read_csv(results / profile / f"{name}.csv")
        out[name] = df.drop(columns=[c for c in TIME_COLUMNS if c in df])
    return out


def _assert_same_tables(a: Path, b: Path, profile: str = "smoke") -> None:
    import pandas as pd

    ta, tb = _profile_tables(a, profile), _profile_tables(b, profile)
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name], check_exact=True)


@pytest.fixture
def assert_same_tables():
    """``assert_same_tables(a, b, profile="smoke")``: two results folders hold the same tables of the
    profile, exactly, wall-time columns aside (no two runs share those)."""
    return _assert_same_tables


@pytest.fixture(scope="session")
def mlp_run(tmp_path_factory):
    """A small MLP trained briefly with MTL-IBP on real MNIST, once per session: cheap enough for
    AutoAttack, the MILP and ONNX export (its run folder is only read by the tests that use it)."""
    from harness.config.settings import RunConfig
    from harness.orchestration.jobs import set_threads
    from harness.rundir import RunDir
    from harness.training.loop import train

    cfg = RunConfig.from_dict({"dataset": "mnist", "eps": 0.05, "method": "mtl_ibp", "arch": "mlp", "width": 24,
                               "epochs": 1, "batch_size": 64, "train_subset": 1024, "val_size": 100,
                               "val_pgd_steps": 2, "eps_ramp_length": 0.5, "init": "ibp", "params": {"alpha": 0.5}})
    root = tmp_path_factory.mktemp("mlp")
    previous = set_threads(1)
    try:
        train(cfg, device="cpu", runs_root=root, log=lambda *_: None)
    finally:
        set_threads(previous)
    return RunDir.of(cfg, root)


@pytest.fixture(scope="session")
def smoke_inline(tmp_path_factory) -> SmokeRun:
    """The smoke profile end to end, inline, one CPU thread per run: the reference every executor's
    tables must equal (on the CPU the thread count changes the last bits of the weights)."""
    from harness.orchestration.pipeline import reproduce

    root = tmp_path_factory.mktemp("smoke-inline")
    run = SmokeRun({"runs_root": root / "runs", "results_dir": root / "results", "plots_dir": root / "plots"})
    t = time.perf_counter()
    assert reproduce("smoke", device="cpu", threads=1, log=run.logs.append, **run.dirs) == 0
    run.seconds = time.perf_counter() - t
    return run


#: Fixtures that run a profile end to end: a test that uses one is ``slow`` (left out by ``make test-quick``).
END_TO_END_FIXTURES = {"smoke_inline", "sweep"}


def pytest_collection_modifyitems(config, items):
    """Tests that use an end-to-end fixture are marked ``slow``; tests marked ``cuda`` run only where torch
    sees a CUDA device (``python -m harness gpucheck`` runs them)."""
    import torch

    for item in items:
        if END_TO_END_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
