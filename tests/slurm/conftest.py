"""A real single-node SLURM for the tests: the session fixture `slurm_cluster`.

The cluster is started by `start.sh` (which installs the Debian packages when they are missing)
into a temporary folder and stopped by `stop.sh` at the end of the session, whatever happened.
While it runs, `SLURM_CONF` names its configuration, so `sbatch`, `squeue`, `sacct` and `scancel`
(and submitit, which calls them) talk to this cluster and to no other.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
START = HERE / "start.sh"
STOP = HERE / "stop.sh"

# start.sh's exit status for "SLURM cannot run on this machine" (not root, no apt-get, packages
# missing and the Debian registry unreachable): the only case that skips.
CANNOT_RUN = 77
# A first start installs the packages (about 10-20 s here); apt-get itself is bounded in start.sh.
START_TIMEOUT_S = 1500
STOP_TIMEOUT_S = 120


@dataclass(frozen=True)
class SlurmCluster:
    """A running test cluster: where its files are, and the partition to submit to."""

    state_dir: Path
    conf: Path
    partition: str


def _partition(conf: Path) -> str:
    """The name of the (only) partition in the cluster's slurm.conf."""
    match = re.search(r"^PartitionName=(\S+)", conf.read_text(), flags=re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{conf} names no partition; start.sh wrote an unexpected configuration")
    return match.group(1)


def _stop(state_dir: Path) -> None:
    """Run stop.sh; a failure to stop is an error of the session, not something to hide."""
    result = subprocess.run(
        [str(STOP), str(state_dir)], capture_output=True, text=True, timeout=STOP_TIMEOUT_S
    )
    if result.returncode != 0:
        raise RuntimeError(f"stop.sh {state_dir} failed ({result.returncode}):\n{result.stderr}")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """Start a private SLURM for the session and yield a `SlurmCluster`; always stop it after.

    Skips only where SLURM cannot run here (start.sh says so with exit status 77); any other
    failure to start is an error of the tests that use it.
    """
    state_dir = tmp_path_factory.mktemp("slurm")
    try:
        started = subprocess.run(
            [str(START), str(state_dir)], capture_output=True, text=True, timeout=START_TIMEOUT_S
        )
    except BaseException:
        _stop(state_dir)
        raise
    if started.returncode == CANNOT_RUN:
        _stop(state_dir)
        pytest.skip(started.stderr.strip().splitlines()[-1])
    if started.returncode != 0:
        _stop(state_dir)
        raise RuntimeError(
            f"start.sh {state_dir} failed with status {started.returncode}:\n{started.stderr}"
        )
    conf = state_dir / "etc" / "slurm.conf"
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("SLURM_CONF", str(conf))
            yield SlurmCluster(state_dir=state_dir, conf=conf, partition=_partition(conf))
    finally:
        _stop(state_dir)
