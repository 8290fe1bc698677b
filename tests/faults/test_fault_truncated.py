"""Files cut short (a crash mid-write on a filesystem without atomic rename, a full disk in another tool,
a copy interrupted): a truncated ``checkpoint.pt`` and a truncated ``certify-*.csv`` are named in a
warning, set aside under a ``.corrupt-<time>`` name (never deleted), and redone to the records of an
uninterrupted run."""

from __future__ import annotations

import shutil
from pathlib import Path

from faultkit import dirs_in, records, runs

from harness.orchestration.pipeline import reproduce


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def copy_of(reference, tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(reference.root, root)
    return root


def test_a_truncated_final_checkpoint_is_named_set_aside_and_the_run_retrained(reference, tmp_path):
    root = copy_of(reference, tmp_path)
    profile = root / "faults.toml"
    run = runs(profile, root)[0]
    truncate(run.checkpoint)
    out_csv = records(profile, run)
    out_csv.unlink()  # certifying it needs its model: the truncated checkpoint is read
    out_csv.with_suffix(".json").unlink()
    logs: list[str] = []
    assert reproduce(profile, device="cpu", threads=1, log=logs.append, **dirs_in(root)) == 0
    warning = [ln for ln in logs if ln.startswith("warning: checkpoint")]
    assert len(warning) == 1 and str(run.checkpoint) in warning[0] and "truncated" in warning[0], logs
    aside = list(run.path.glob("checkpoint.pt.corrupt-*"))
    assert [p.name for p in aside if not p.name.endswith(".sha256")], "the truncated checkpoint was not kept"
    assert any("training it again" in ln for ln in logs) and any("resuming after epoch 1/2" in ln for ln in logs)
    ref = runs(reference.profile, reference.root)[0]
    assert out_csv.read_bytes() == records(reference.profile, ref).read_bytes()


def test_truncated_records_are_named_set_aside_and_certified_again(reference, tmp_path):
    root = copy_of(reference, tmp_path)
    profile = root / "faults.toml"
    run = runs(profile, root)[1]
    out_csv = records(profile, run)
    truncate(out_csv)
    cut = out_csv.read_bytes()
    logs: list[str] = []
    assert reproduce(profile, device="cpu", threads=1, log=logs.append, **dirs_in(root)) == 0
    warning = [ln for ln in logs if ln.startswith("warning: certification records")]
    assert len(warning) == 1 and str(out_csv) in warning[0] and "truncated" in warning[0], logs
    assert any("1 to certify" in ln for ln in logs), logs
    aside = list(run.path.glob(f"{out_csv.name}.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == cut
    ref = runs(reference.profile, reference.root)[1]
    assert out_csv.read_bytes() == records(reference.profile, ref).read_bytes()
