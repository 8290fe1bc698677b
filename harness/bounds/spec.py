"""The question every certifier answers: lower bounds of the margins z_y - z_j over an input box.

One place for the specification matrix and the input box, shared by the own IBP and the
auto_LiRPA adapter so that both bound exactly the same thing.
"""

from __future__ import annotations

import torch


def spec_matrix(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Specification matrix C of shape (B, K-1, K) with rows e_y - e_j for every wrong class j.

    Rows are ordered by j ascending, skipping y, so (C @ z)[b, i] = z_y - z_{j_i}.
    """
    if y.dim() != 1:
        raise ValueError(f"labels must be a 1-D tensor, got shape {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got range [{int(y.min())}, {int(y.max())}]")
    batch = y.shape[0]
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    full = eye[y].unsqueeze(1) - eye.unsqueeze(0)  # (B, K, K): row j = e_y - e_j
    keep = torch.ones(batch, num_classes, dtype=torch.bool, device=y.device)
    keep[torch.arange(batch, device=y.device), y] = False
    return full[keep].view(batch, num_classes - 1, num_classes)


def check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise ValueError when inputs and labels disagree on the batch size."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"batch size mismatch: {x.shape[0]} inputs but {y.shape[0]} labels")
