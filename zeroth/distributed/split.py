"""Splitting a direction set into pieces that workers evaluate, and putting the losses back.

A piece is a sorted list of *direction* numbers (a coordinate of CGE, a seed of RGE/SPSA).
Two-sided schemes keep both signs of a direction in the same piece, so a piece of ``m``
directions has ``m`` (one-sided) or ``2m`` (``+`` block, then ``−`` block) evaluations, in
the layout every evaluator uses (see :mod:`zeroth.estimators.directions`).

Pieces are built from contiguous blocks (:func:`blocks`); a worker's chunk is the union of
the blocks it was given, interleaved over the whole range (:func:`assign`), so that every
worker gets a similar mix of cheap and costly directions (with ``FeatureReuseEvaluator``, a
coordinate of the first layer costs far more than one of the classifier).
"""

from __future__ import annotations

from typing import List, Optional, Protocol, Sequence, Tuple, TypeGuard

import torch
from torch import Tensor

from ..estimators.directions import Directions, SeedSubset  # noqa: F401  (SeedSubset: old import path)

Block = Tuple[int, int]  # directions [start, stop)


class _Splittable(Protocol):
    """A direction set that hands out subsets of its directions (what :func:`can_split` checks)."""

    def subset(self, ids: Tensor) -> Directions: ...

    def to_devices(self, devices: Sequence[torch.device]) -> Directions: ...


def blocks(num_directions: int, num_blocks: int) -> List[Block]:
    """``[0, num_directions)`` cut into at most ``num_blocks`` contiguous blocks of near-equal size.

    Returns:
        ``[(start, stop), ...]`` in order, none empty; ``[(0, 0)]`` when ``num_directions`` is 0.
    """
    count = max(1, min(num_blocks, num_directions))
    edges = [num_directions * i // count for i in range(count + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a] or [(0, 0)]


def assign(all_blocks: Sequence[Block], weights: Sequence[float]) -> List[List[Block]]:
    """Blocks per worker, about proportional to ``weights`` (speeds), interleaved in order.

    Each block in turn goes to the worker whose load after taking it, divided by its weight,
    is smallest (ties: the lower worker number), so equal weights give ``0, 1, 0, 1, ...``.
    Workers may end with no block when there are fewer blocks than workers.

    Args:
        all_blocks: the blocks, in order (from :func:`blocks`).
        weights: one positive speed per worker.

    Returns:
        Per worker, its list of blocks (its *piece*), in increasing order.
    """
    load = [0] * len(weights)
    out: List[List[Block]] = [[] for _ in weights]
    for a, b in all_blocks:
        size = max(b - a, 1)
        w = min(range(len(weights)), key=lambda i: ((load[i] + size) / weights[i], i))
        load[w] += size
        out[w].append((a, b))
    return out


def members(piece: Sequence[Block]) -> Tensor:
    """The direction numbers of a piece, ascending (int64)."""
    parts = [torch.arange(a, b) for a, b in sorted(piece)]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)


def can_split(dirs: Directions) -> TypeGuard[_Splittable]:
    """True when ``dirs`` can hand out subsets of its directions (declares ``subset`` and ``to_devices``)."""
    return callable(getattr(dirs, "subset", None)) and callable(getattr(dirs, "to_devices", None))


def subset(dirs: Directions, ids: Tensor) -> Directions:
    """The directions ``ids`` (ascending) of ``dirs`` as a direction set of their own (``dirs.subset``).

    Raises:
        TypeError: ``dirs`` declares no ``subset``/``to_devices``.
    """
    if not can_split(dirs):
        raise TypeError(f"cannot split a {type(dirs).__name__} direction set (it declares no subset/to_devices)")
    return dirs.subset(ids)


def to_device(dirs: Directions, devices: Sequence[torch.device]) -> Directions:
    """A subset ready for parameters on ``devices`` (``dirs.to_devices``).

    Raises:
        TypeError: ``dirs`` declares no ``subset``/``to_devices`` (a piece made by :func:`subset` does).
    """
    if not can_split(dirs):
        raise TypeError(f"cannot split a {type(dirs).__name__} direction set (it declares no subset/to_devices)")
    return dirs.to_devices(devices)


def scatter(dirs: Directions, ids: Tensor, piece_losses: Tensor, out: Tensor) -> None:
    """Write a piece's losses into the global loss vector ``out`` (``+`` block, then ``−`` block).

    Args:
        dirs: the whole direction set (its ``num_directions`` and ``num_signs`` give the layout).
        ids: the piece's direction numbers, ``(m,)`` int64.
        piece_losses: the piece's ``m · num_signs`` losses, in the piece's own layout.
        out: the ``(len(dirs),)`` loss vector, written in place.

    Raises:
        RuntimeError: a worker returned another number of losses than the piece has evaluations.
    """
    n, m = dirs.num_directions, int(ids.numel())
    if piece_losses.shape[0] != m * dirs.num_signs:
        raise RuntimeError(f"a worker returned {piece_losses.shape[0]} losses for {m * dirs.num_signs} evaluations")
    ids = ids.to(out.device)
    for s in range(dirs.num_signs):
        out[s * n + ids] = piece_losses[s * m : (s + 1) * m].to(out.device, out.dtype)


def piece_size(piece: Optional[Sequence[Block]]) -> int:
    """Number of directions (units) in a piece; 0 for None or an empty piece."""
    return sum(b - a for a, b in piece or ())
