"""In-memory batches for training and evaluation: subsets, augmentation, a seeded batch iterator."""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F


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
