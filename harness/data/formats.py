"""Readers of the on-disk formats: idx files (MNIST, Fashion-MNIST) and CIFAR-10's python pickles."""

from __future__ import annotations

import math
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from harness.data import registry
from harness.data.checksums import verify_file
from harness.data.registry import PathLike, Split


def read_idx(path: PathLike) -> np.ndarray:
    """Parse an uncompressed idx file of unsigned bytes (the MNIST format) into an array."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an idx file of unsigned bytes")
    ndim = int(raw[3])
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim].tobytes())
    body = raw[4 + 4 * ndim :]
    if body.size != math.prod(dims):
        raise ValueError(f"{path}: header says {dims} but holds {body.size} values")
    return body.reshape(dims)


def _idx_count(path: Path) -> int:
    with open(path, "rb") as f:
        return struct.unpack(">I", f.read(8)[4:8])[0]


def load_cifar10_batches(folder: PathLike, split: Split, *, verify: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``cifar-10-batches-py`` pickles into (float32 N x 3 x 32 x 32 in [0, 1], int64 N).

    ``verify=True`` checks every batch (and batches.meta) against the official md5s before
    unpickling: pickles execute code, and synthetic data must never pass for CIFAR-10.
    ``verify=False`` exists for tests that write data in the same format.
    """
    folder = Path(folder)
    files = registry._cifar10_files()
    if verify:
        for f in files:
            verify_file(folder / f.name, f.md5)
    images, labels = [], []
    for f in files:
        if f.split != split:
            continue
        with open(folder / f.name, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        ys = list(batch[b"labels"])
        if data.shape != (len(ys), 3 * 32 * 32):
            raise ValueError(f"{folder / f.name}: data shape {data.shape} for {len(ys)} labels")
        images.append(data)
        labels.extend(ys)
    if not images:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each plane row-major:
    # exactly C x H x W order.
    x = torch.from_numpy(np.concatenate(images)).view(-1, 3, 32, 32).to(torch.float32).div_(255)
    y = torch.tensor(labels, dtype=torch.int64)
    return x, y
