"""Devices: which one to use, and the arithmetic each stage may use on it.

Training may use TF32 tensor cores on CUDA (about 2x faster matrix products, ~1e-3 relative error,
harmless to a stochastic optimiser). Certification and evaluation must not: the floating-point
soundness rule of :mod:`harness.bounds` assumes IEEE float32 / float64 arithmetic, and a
counterexample must be misclassified by a plain float32 forward pass. Note that torch's default
leaves TF32 *on* for cuDNN convolutions, so :func:`exact_arithmetic` turns it off explicitly.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path
from typing import Iterator

import torch

from harness.config.constraints import ConfigError


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; ``cpu``/``cuda`` are taken as asked (error if unavailable)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device; use --device cpu or auto")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; elsewhere what ``platform`` knows), for provenance."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """What identifies the speed of a device: the GPU's name, or ``cpu`` with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu x{torch.get_num_threads()}"


@contextlib.contextmanager
def _backend_flags(matmul_tf32: bool, cudnn_tf32: bool, benchmark: bool | None) -> Iterator[None]:
    cuda_matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (cuda_matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark)
    cuda_matmul.allow_tf32, cudnn.allow_tf32 = matmul_tf32, cudnn_tf32
    if benchmark is not None:
        cudnn.benchmark = benchmark
    try:
        yield
    finally:
        cuda_matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark = saved


def training_arithmetic(device: torch.device) -> contextlib.AbstractContextManager:
    """Training on CUDA: TF32 matrix products and convolutions, cuDNN's autotuned algorithms.

    On the CPU nothing changes (TF32 is a tensor-core format; the CPU computes float32 exactly as
    before), so CPU results are bit-for-bit those of earlier versions.
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    return _backend_flags(matmul_tf32=True, cudnn_tf32=True, benchmark=True)


def exact_arithmetic(device: torch.device) -> contextlib.AbstractContextManager:
    """Certification and evaluation: IEEE float32 / float64 only (TF32 off for matmul *and* cuDNN)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return _backend_flags(matmul_tf32=False, cudnn_tf32=False, benchmark=None)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak memory allocated by torch on a CUDA device since the last reset (None on the CPU)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def is_out_of_memory(e: BaseException) -> bool:
    """An allocation failure of the device (torch.OutOfMemoryError, or the older RuntimeError form)."""
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


def free_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
