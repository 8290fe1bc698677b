"""VNN-COMP's ``instances.csv``: one instance per line, ``onnx,vnnlib,timeout`` (paths relative to the file)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Instance", "read_instances", "write_instances"]


@dataclass(frozen=True)
class Instance:
    """One benchmark instance: the network, the property (absolute paths) and the timeout in seconds."""

    onnx: Path
    vnnlib: Path
    timeout_s: float


def read_instances(path: Path | str) -> list[Instance]:
    """Parse an ``instances.csv``; a bad line raises ValueError naming it.

    A path that does not exist but whose ``.gz`` does (the benchmark repositories ship compressed
    files) is taken as the ``.gz``.
    """
    path = Path(path)
    root = path.parent
    out = []
    with path.open(newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 3:
                raise ValueError(f"{path}:{lineno}: expected onnx,vnnlib,timeout, got {len(row)} field(s)")
            try:
                timeout = float(row[2])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: timeout {row[2]!r} is not a number") from None
            if not timeout > 0:
                raise ValueError(f"{path}:{lineno}: timeout must be > 0, got {row[2]!r}")
            files = []
            for rel in row[:2]:
                p = root / rel.strip()
                if not p.exists() and Path(str(p) + ".gz").exists():
                    p = Path(str(p) + ".gz")
                if not p.exists():
                    raise ValueError(f"{path}:{lineno}: no file {p}")
                files.append(p)
            out.append(Instance(files[0], files[1], timeout))
    if not out:
        raise ValueError(f"{path}: no instances")
    return out


def write_instances(path: Path | str, rows: list[tuple[str, str, float]]) -> None:
    """Write ``instances.csv`` rows (onnx path, vnnlib path relative to the file, timeout); no header, as VNN-COMP."""
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        for onnx, vnnlib, timeout in rows:
            w.writerow([onnx, vnnlib, f"{timeout:g}"])
