"""The reference of the fault-injection tests: the faults profile run inline, uninterrupted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from faultkit import dirs_in, write_profile

from harness.orchestration.pipeline import reproduce


@dataclass
class Reference:
    profile: Path
    root: Path


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Reference:
    """The faults profile end to end, inline, one CPU thread per run, never interrupted: every resumed
    run's records must equal these byte for byte."""
    root = tmp_path_factory.mktemp("faults-reference")
    profile = write_profile(root)
    assert reproduce(profile, device="cpu", threads=1, log=lambda _: None, **dirs_in(root)) == 0
    return Reference(profile, root)
