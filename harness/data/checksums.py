"""md5 verification of dataset files, with a per-folder cache keyed by size and mtime, and the
installer that makes a file appear only complete and verified."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from harness.data.registry import ChecksumError, DataFile, PathLike, _log, _SourceFailed

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


def _install_from_tar(tarball: Path, by_member: dict[str, DataFile], folder: Path) -> list[str]:
    """Stream a .tar.gz once and install the members named in ``by_member`` (member name -> file) into
    ``folder``, each md5-checked before it becomes visible; returns the names the archive lacked.

    Members go straight to their final names one by one instead of through extractall: no path from
    the archive is trusted, and nothing else from it is written to disk.
    """
    left = dict(by_member)
    with tarfile.open(tarball, mode="r|gz") as tar:
        for member in tar:
            f = left.pop(member.name, None)
            if f is not None and member.isfile():
                src = tar.extractfile(member)
                assert src is not None
                _install(src, folder / f.name, f.md5)
    return sorted(left)
