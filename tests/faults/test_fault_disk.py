"""A full disk (ENOSPC injected into the harness's file writes, since a disk cannot be filled safely) at
each write site: checkpoint, records, table, figure. Expected: a one-line error naming the file and the
fix, a non-zero exit, the previous files intact, no temporary file left, and the next invocation
resumes to the records of an uninterrupted run.

The injection replaces ``open`` in :mod:`harness.rundir`, through which every atomic write goes, so the
real write path (temporary file, fsync, rename, clean-up) runs up to the failing ``write``.
"""

from __future__ import annotations

import shutil

import pytest
from faultkit import FullDisk, cli_args, dirs_in, records, runs, snapshot, temporaries, write_profile

from harness import cli, rundir
from harness.rundir import _load_verified


def one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.slow
def test_a_full_disk_while_training_then_while_certifying_stops_cleanly_and_resumes_identically(
        reference, tmp_path, monkeypatch, capsys):
    profile = write_profile(tmp_path)
    first, second = runs(profile, tmp_path)
    args = cli_args(profile, tmp_path, "--executor", "inline")

    # 1. the second checkpoint of the first run (its epoch 2) meets a full disk
    disk = FullDisk("checkpoint.pt", after=1)
    monkeypatch.setattr(rundir, "open", disk, raising=False)
    assert cli.main(args) == 1
    line = one_error_line(capsys)
    assert disk.hits == ["checkpoint.pt"]
    assert f"cannot write {first.checkpoint}: No space left on device" in line and "free space" in line, line
    assert "run the same command again" in line
    # the last good checkpoint, intact under its own name (checksum verified), the one before it kept
    assert int(_load_verified(first.checkpoint)["epoch"]) == 1 and not first.previous.exists()
    assert not first.finished and not second.path.exists()  # a full disk stops the invocation
    assert not temporaries(tmp_path)

    # 2. the resume trains epoch 2, then the first run's records meet a full disk
    disk = FullDisk("certify-*.csv")
    monkeypatch.setattr(rundir, "open", disk, raising=False)
    assert cli.main(args) == 1
    line = one_error_line(capsys)
    out_csv = records(profile, first)
    assert f"cannot write {out_csv}: No space left on device" in line, line
    assert first.finished and not out_csv.exists() and not out_csv.with_suffix(".json").exists()
    assert not temporaries(tmp_path)

    # 3. space again: the same command finishes, with the uninterrupted run's records
    monkeypatch.setattr(rundir, "open", open, raising=False)
    assert cli.main(args) == 0
    capsys.readouterr()
    for mine, ref in zip((first, second), runs(reference.profile, reference.root)):
        assert records(profile, mine).read_bytes() == records(reference.profile, ref).read_bytes()


@pytest.mark.parametrize("command, pattern, after, folder", [
    ("tables", "summary_mean.csv", 0, "results"),
    ("figures", "*.png", 1, "plots"),
])
def test_a_full_disk_while_writing_a_table_or_a_figure_keeps_the_previous_ones(
        reference, tmp_path, monkeypatch, capsys, command, pattern, after, folder):
    root = tmp_path / "copy"
    shutil.copytree(reference.root, root)
    d = dirs_in(root)
    argv = [command, "--profile", str(root / "faults.toml"), "--runs", str(d["runs_root"]),
            "--results", str(d["results_dir"]), "--plots", str(d["plots_dir"])]
    before = snapshot(root)
    disk = FullDisk(pattern, after)
    monkeypatch.setattr(rundir, "open", disk, raising=False)
    assert cli.main(argv) == 1
    line = one_error_line(capsys)
    assert len(disk.hits) == 1
    assert f"cannot write {root / folder / 'faults' / disk.hits[0]}: No space left on device" in line, line
    assert snapshot(root) == before  # nothing half-written, nothing left behind
    monkeypatch.setattr(rundir, "open", open, raising=False)
    assert cli.main(argv) == 0
    capsys.readouterr()
