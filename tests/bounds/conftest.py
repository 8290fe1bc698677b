"""Helpers shared by the bound tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def mnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    """The real MNIST test set (fetched and verified if needed)."""
    from harness import data

    root = data.data_root()
    data.ensure_dataset("mnist", root)
    return data.load_split("mnist", "test", root)
