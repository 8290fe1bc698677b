"""Batches that adapt to the device's memory: split on out-of-memory, keep the size that worked.

A certifier's memory grows with its batch (CROWN on CNN7 needs tens of GiB for a handful of
samples), and what fits depends on the device. :class:`AdaptiveBatches` runs a function over
consecutive chunks of sample indices; when the device runs out of memory it halves the chunk and
retries the *same* samples, so no sample is skipped or processed twice, and it remembers the size
that worked for the rest of the process (per key, e.g. certifier and architecture).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from harness.runtime.device import free_cached_memory, is_out_of_memory

#: Sizes that worked, by key, for the life of the process (later runs of the same model start there).
_KNOWN_SIZES: dict[tuple, int] = {}


class AdaptiveBatches:
    """Run ``fn(chunk)`` over index chunks, halving the chunk on out-of-memory errors."""

    def __init__(self, device: torch.device, log: Callable[[str], None] = print) -> None:
        self.device, self.log = device, log
        self.used: dict[str, int] = {}   # key label -> the last size that worked, for the records

    def run(self, key: tuple, idx: np.ndarray, size: int, fn: Callable[[np.ndarray], None]) -> None:
        """Call ``fn`` on ``idx`` in order, in chunks of at most ``size`` (or a smaller known-good size).

        ``fn`` must not keep partial results of a call that raised: the chunk is done again, smaller.
        """
        size = max(1, min(size, _KNOWN_SIZES.get(key, size)))
        start = 0
        while start < len(idx):
            chunk = idx[start:start + size]
            try:
                fn(chunk)
            except Exception as e:  # noqa: BLE001 - only out-of-memory is handled; everything else re-raised
                if not is_out_of_memory(e) or size == 1:
                    raise
                free_cached_memory(self.device)
                size = max(1, size // 2)
                _KNOWN_SIZES[key] = size
                self.log(f"  out of memory in {key[0]} at batch {len(chunk)}; retrying those samples at {size}")
                continue
            start += len(chunk)
        if len(idx):
            self.used[str(key[0])] = size


def forget_known_sizes() -> None:
    """Clear the sizes remembered in this process (tests)."""
    _KNOWN_SIZES.clear()
