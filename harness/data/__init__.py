"""Datasets: the registry, acquisition with md5 verification, and in-memory tensor loaders.

Each dataset lives under the data root (``$HARNESS_DATA`` or ``<repo>/data``) in the
layout torchvision expects, so ``torchvision.datasets.MNIST(root, download=False)`` and
friends read the same files:

- ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
- ``<root>/FashionMNIST/raw/...`` (same names)
- ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``

Acquisition never trusts a file it has not verified: every file is checked against its
md5 (the registry below for MNIST / Fashion-MNIST, torchvision's own list for CIFAR-10)
and new files are written under a temporary name and renamed into place only after their
md5 matched, so an interrupted download never leaves a plausible-looking partial file.
Because hashing ~200 MB on every run is wasteful, computed md5s are remembered per
directory in ``.verified.json`` keyed by file name, size and mtime_ns, and in-process.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Sequence

import torch

from harness.data import acquire, batches, checksums, formats, registry, sources  # noqa: F401 - submodules
from harness.data.acquire import ensure_dataset
from harness.data.batches import TensorBatches, augment_crop_flip, make_loader, subset
from harness.data.checksums import _install, md5_file, verify_file
from harness.data.formats import _idx_count, load_cifar10_batches, read_idx
from harness.data.registry import (
    DATASETS,
    ChecksumError,
    DataError,
    DataFile,
    DatasetInfo,
    DatasetUnavailableError,
    Mirror,
    PathLike,
    Split,
    UnknownDatasetError,
    _SourceFailed,
    data_root,
    get_info,
)

__all__ = [
    "DATASETS", "ChecksumError", "DataError", "DataFile", "DatasetInfo", "DatasetUnavailableError", "Mirror",
    "TensorBatches", "UnknownDatasetError", "augment_crop_flip", "data_root", "ensure_dataset", "get_info",
    "load_cifar10_batches", "load_split", "main_data", "make_loader", "md5_file", "read_idx", "subset",
    "verify_file",
]


def load_split(
    name: str, split: Split, root: PathLike | None = None, *, allow_download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split as (images float32 N x C x H x W in [0, 1], labels int64 N).

    Loading does not fetch anything by default, so a training run never starts npm, apt
    or a download behind the user's back; a missing dataset raises
    :class:`DatasetUnavailableError` telling how to get it (``make data``).
    """
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    info = get_info(name)
    folder = ensure_dataset(info.name, root, allow_download=allow_download)
    if info.name == "cifar10":
        x, y = load_cifar10_batches(folder, split)
    else:
        images = read_idx(folder / info.file(split, "images").name)
        labels = read_idx(folder / info.file(split, "labels").name)
        x = torch.from_numpy(images).unsqueeze(1).to(torch.float32).div_(255)
        y = torch.from_numpy(labels).to(torch.int64)
    if tuple(x.shape[1:]) != info.in_shape or len(x) != len(y):
        raise ValueError(f"{info.name} {split}: got images {tuple(x.shape)} and {len(y)} labels")
    return x, y


# --------------------------------------------------------------------------- CLI


def _split_sizes(info: DatasetInfo, folder: Path) -> tuple[int, int]:
    if info.name == "cifar10":
        counts = {"train": 0, "test": 0}
        for f in info.files:
            if f.split is not None:
                with open(folder / f.name, "rb") as fh:
                    counts[f.split] += len(pickle.load(fh, encoding="bytes")[b"labels"])
        return counts["train"], counts["test"]
    return (
        _idx_count(folder / info.file("train", "labels").name),
        _idx_count(folder / info.file("test", "labels").name),
    )


def main_data(names: Sequence[str], root: PathLike | None = None) -> int:
    """Ensure each named dataset; one summary line per dataset. Returns 0 only if all are ready.

    Failures are reported on stderr and do not stop the remaining datasets.
    """
    if not names:
        print(f"no dataset named; known datasets: {', '.join(sorted(DATASETS))}", file=sys.stderr)
        return 2
    status = 0
    for name in names:
        try:
            info = get_info(name)
            folder = ensure_dataset(info.name, root)
            n_train, n_test = _split_sizes(info, folder)
        except UnknownDatasetError as e:
            print(f"{name}: UNKNOWN: {e}", file=sys.stderr)
            status = 1
        except ChecksumError as e:
            print(f"{name}: CORRUPTED: {e}", file=sys.stderr)
            status = 1
        except DataError as e:
            print(f"{name}: UNAVAILABLE: {e}", file=sys.stderr)
            status = 1
        else:
            print(f"{info.name}: ok  {folder}  md5-verified {len(info.files)} files  train {n_train}  test {n_test}")
    return status
