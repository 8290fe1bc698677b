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


def input_box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The l_inf ball B(x, eps) intersected with the data domain [0, 1], as (lower, upper).

    Raises ValueError (naming the problem and the fix) for eps < 0 or inputs outside [0, 1].
    """
    eps = float(eps)
    if not eps >= 0:  # also rejects NaN
        raise ValueError(f"eps must be >= 0, got {eps}")
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError(f"inputs must lie in [0, 1] (pixel space; normalisation is a model layer), "
                         f"got range [{float(x.min()):.4g}, {float(x.max()):.4g}]")
    return (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)


def check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise ValueError when inputs and labels disagree on the batch size."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"batch size mismatch: {x.shape[0]} inputs but {y.shape[0]} labels")
