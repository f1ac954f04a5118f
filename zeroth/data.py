"""Data without downloads: scikit-learn's 8×8 digits, CIFAR-10 read from a folder you provide, batching."""

from __future__ import annotations

import numbers
import os
import pickle
from typing import Iterator, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ._optional import require


class Split(NamedTuple):
    """A train/test split of images ``(N, C, H, W)`` in [0, 1] and labels ``(N,)``."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits(
    test_fraction: float = 0.25,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device] = None,
) -> Split:
    """``sklearn.datasets.load_digits`` (1 797 images) split by a seeded permutation, stratified by class.

    Args:
        test_fraction: fraction of each class held out for the test set, in (0, 1).
        seed: seed of the permutation.
        dtype: dtype of the images.
        device: where the tensors go (None: the CPU).

    Returns:
        A :class:`Split` of images ``(N, 1, 8, 8)`` in [0, 1] (pixel values / 16) and int64 labels.

    Raises:
        ValueError: ``test_fraction`` is not in (0, 1).
        ImportError: scikit-learn is not installed (the message names the ``science`` extra).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"Invalid test_fraction value: {test_fraction!r} (expected 0 < test_fraction < 1)")
    datasets = require("sklearn.datasets", "science")
    bunch = datasets.load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float64).div_(16.0).reshape(-1, 1, 8, 8)
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in range(int(y.max()) + 1):  # stratified: the same class balance in both parts
        idx = (y == c).nonzero().reshape(-1)
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_test = int(round(test_fraction * idx.numel()))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr = torch.cat(train_idx)
    te = torch.cat(test_idx)
    tr = tr[torch.randperm(tr.numel(), generator=g)]
    te = te[torch.randperm(te.numel(), generator=g)]
    return Split(
        x[tr].to(dtype=dtype, device=device), y[tr].to(device), x[te].to(dtype=dtype, device=device), y[te].to(device)
    )


def batches(
    x: Tensor, y: Tensor, batch_size: int, generator: Optional[torch.Generator] = None, drop_last: bool = True
) -> Iterator[Tuple[Tensor, Tensor]]:
    """Shuffled mini-batches (one epoch); deterministic given ``generator``.

    The arguments are checked when ``batches`` is called; the permutation is drawn at the
    first ``next()`` (as a generator function would).

    Args:
        x: ``(N, ...)`` inputs.
        y: ``(N, ...)`` targets.
        batch_size: rows per batch, an integer ≥ 1.
        generator: source of the permutation (drawn on the CPU; None: torch's global RNG).
        drop_last: drop the last, smaller batch (when there is at least one full batch).

    Returns:
        An iterator of ``(x[idx], y[idx])`` pairs.

    Raises:
        TypeError: ``batch_size`` is not an integer (``bool`` included).
        ValueError: ``batch_size`` < 1, or ``x`` and ``y`` have different numbers of rows.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"Invalid batch_size value: {batch_size!r} (an integer >= 1)")
    if batch_size < 1:
        raise ValueError(f"Invalid batch_size value: {batch_size!r} (an integer >= 1)")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}")
    return _batches(x, y, int(batch_size), generator, drop_last)


def _batches(
    x: Tensor, y: Tensor, batch_size: int, generator: Optional[torch.Generator], drop_last: bool
) -> Iterator[Tuple[Tensor, Tensor]]:
    n = x.shape[0]
    order = torch.randperm(n, generator=generator).to(x.device)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        idx = order[i : i + batch_size]
        yield x[idx], y[idx]


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    """Fraction of correct argmax predictions (model put in eval mode, then restored).

    Args:
        model: maps ``(b, ...)`` inputs to ``(b, classes)`` scores.
        x: ``(N, ...)`` inputs.
        y: ``(N,)`` int64 labels.
        batch_size: rows per forward.

    Returns:
        A float in [0, 1].
    """
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
    model.train(was)
    return correct / x.shape[0]


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _cifar_folder(data_dir: str) -> str:
    """``data_dir`` itself or its ``cifar-10-batches-py`` subfolder, whichever holds ``test_batch``."""
    for folder in (data_dir, os.path.join(data_dir, "cifar-10-batches-py")):
        if os.path.isfile(os.path.join(folder, "test_batch")):
            return folder
    raise FileNotFoundError(
        f"data_dir: no CIFAR-10 python batches in {data_dir!r} (expected data_batch_1..5 and test_batch there or in "
        "its cifar-10-batches-py/ folder; nothing is downloaded)"
    )


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
    """CIFAR-10 from the python-pickle batches in ``data_dir``: images ``(N, 3, 32, 32)`` in [0, 1].

    Nothing is downloaded. ``data_dir`` is the folder holding ``data_batch_1`` … ``data_batch_5``
    and ``test_batch``, or its parent holding ``cifar-10-batches-py/``.

    Returns:
        A :class:`Split`: 50 000 training and 10 000 test images (float32, not normalised) and
        int64 labels.

    Raises:
        FileNotFoundError: the batches are not there (the message says what is expected).
    """
    folder = _cifar_folder(os.fspath(data_dir))
    x_train, y_train = _read_batches(folder, [f"data_batch_{i}" for i in range(1, 6)])
    x_test, y_test = _read_batches(folder, ["test_batch"])
    return Split(x_train, y_train, x_test, y_test)
