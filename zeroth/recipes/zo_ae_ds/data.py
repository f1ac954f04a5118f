"""The recipe's datasets, pixels in [0, 1] (noise is added there): digits, or CIFAR-10 from disk.

Nothing is downloaded: :func:`zeroth.data.load_cifar10` reads the standard python-pickle
batches from a folder you provide, in [0, 1] and not normalised: smoothing noise lives on
the [0, 1] pixel scale, and the classifier normalises inside (:class:`Normalize`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ...data import CIFAR10_MEAN, CIFAR10_STD, load_cifar10  # noqa: F401  (the recipe's data API)


class Normalize(nn.Module):
    """``(x − mean) / std`` per channel, as the classifier's first layer (inputs stay in [0, 1])."""

    mean: Tensor  # (1, C, 1, 1) buffer
    std: Tensor  # (1, C, 1, 1) buffer

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        """Buffers, so they follow ``.to(device)`` and the state dict."""
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Normalised ``x``."""
        return (x - self.mean) / self.std
