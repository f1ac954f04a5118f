"""The recipe's datasets, pixels in [0, 1] (noise is added there): digits, or CIFAR-10 from disk.

Nothing is downloaded: ``load_cifar10`` reads the standard python-pickle batches
(``data_batch_1`` … ``data_batch_5``, ``test_batch``) from a folder you provide. Unlike
``examples/train_cifar_resnet20.py`` it does not normalise: smoothing noise lives on the
[0, 1] pixel scale, and the classifier normalises inside (:class:`Normalize`).
"""
from __future__ import annotations

import os
import pickle
from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn

from ...data import Split

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """``(x − mean) / std`` per channel, as the classifier's first layer (inputs stay in [0, 1])."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        """Buffers, so they follow ``.to(device)`` and the state dict."""
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Normalised ``x``."""
        return (x - self.mean) / self.std


def _cifar_folder(data_dir: str) -> str:
    """``data_dir`` itself or its ``cifar-10-batches-py`` subfolder, whichever holds ``test_batch``."""
    for folder in (data_dir, os.path.join(data_dir, "cifar-10-batches-py")):
        if os.path.isfile(os.path.join(folder, "test_batch")):
            return folder
    raise FileNotFoundError(
        f"data_dir: no CIFAR-10 python batches in {data_dir!r} (expected data_batch_1..5 and test_batch there or in "
        "its cifar-10-batches-py/ folder; nothing is downloaded)")


def _read_batches(folder: str, names: List[str]) -> Tuple[Tensor, Tensor]:
    """Images ``(N, 3, 32, 32)`` in [0, 1] and labels of the named pickle batches."""
    xs, ys = [], []
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data_dir: {path} is missing")
        with open(path, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        xs.append(torch.as_tensor(batch[b"data"], dtype=torch.uint8).reshape(-1, 3, 32, 32))  # (N, 3, 32, 32)
        ys.append(torch.as_tensor(batch[b"labels"], dtype=torch.long))
    return torch.cat(xs).float().div_(255), torch.cat(ys)


def load_cifar10(data_dir: str) -> Split:
    """CIFAR-10 from the python-pickle batches in ``data_dir``: images ``(N, 3, 32, 32)`` in [0, 1]."""
    folder = _cifar_folder(os.fspath(data_dir))
    x_train, y_train = _read_batches(folder, [f"data_batch_{i}" for i in range(1, 6)])
    x_test, y_test = _read_batches(folder, ["test_batch"])
    return Split(x_train, y_train, x_test, y_test)
