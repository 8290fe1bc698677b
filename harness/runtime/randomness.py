"""Seeds derived from names, and per-sample noise that does not depend on batching.

Evaluation draws random numbers (PGD's random starts, AutoAttack's) that must not depend on what the
process did before, nor, for PGD, on how the samples were batched: a certification that is resumed
or re-run writes byte-identical records, and one re-batched after an out-of-memory error draws the
same starts (its margins may then differ in their last bits: a batched product's rounding depends on
the batch size). So every draw comes from a generator seeded by a name (the run id, the stage) and,
for per-sample noise, by the sample's index.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from any sequence of names and numbers (stable across processes and machines)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


class SampleNoise:
    """Uniform noise in [-1, 1] for sample ``i`` and restart ``r``: a function of (seed, i, r) alone.

    Drawn on the CPU in fixed chunks of ``chunk`` samples, each from its own generator, so a batch
    that starts mid-chunk gets the same rows as any other batching would.
    """

    def __init__(self, seed: int, shape: Sequence[int], chunk: int = 256) -> None:
        self.seed, self.shape, self.chunk = int(seed), tuple(shape), int(chunk)
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def _block(self, restart: int, block: int) -> torch.Tensor:
        key = (restart, block)
        if key not in self._cache:
            if len(self._cache) > 8:  # batches move forward through the set: keep a few blocks only
                self._cache.clear()
            gen = torch.Generator().manual_seed(derived_seed(self.seed, restart, block))
            self._cache[key] = torch.rand((self.chunk, *self.shape), generator=gen).mul_(2).sub_(1)
        return self._cache[key]

    def uniform(self, indices: Sequence[int] | np.ndarray | torch.Tensor, restart: int) -> torch.Tensor:
        """Noise for the samples ``indices`` (CPU float32, shape (len(indices), *shape))."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        if idx.numel() == 0:
            return torch.zeros((0, *self.shape))
        blocks, rows = idx // self.chunk, idx % self.chunk
        out = torch.empty((len(idx), *self.shape))
        for b in torch.unique(blocks).tolist():
            sel = blocks == b
            out[sel] = self._block(restart, b)[rows[sel]]
        return out

    def starts(self, indices: Sequence[int] | np.ndarray | torch.Tensor):
        """The ``start_noise`` callable of :func:`harness.attacks.pgd_attack` for these samples."""
        return lambda restart: self.uniform(indices, restart)
