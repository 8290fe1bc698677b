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


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run only where torch sees a CUDA device (``python -m harness gpucheck`` runs them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
