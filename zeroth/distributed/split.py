"""Splitting a direction set into pieces that workers evaluate, and putting the losses back.

A piece is a sorted list of *direction* numbers (a coordinate of CGE, a seed of RGE/SPSA).
Two-sided schemes keep both signs of a direction in the same piece, so a piece of ``m``
directions has ``m`` (one-sided) or ``2m`` (``+`` block, then ``−`` block) evaluations, in
the layout every evaluator uses (see :mod:`zeroth.estimators.directions`).

Pieces are built from contiguous blocks (:func:`blocks`); a worker's chunk is the union of
the blocks it was given, interleaved over the whole range (:func:`assign`), so that every
worker gets a similar mix of cheap and costly directions (with ``FeatureReuse``, a
coordinate of the first layer costs far more than one of the classifier).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..estimators.directions import Coordinates, Directions, RandomDirections

Block = Tuple[int, int]  # directions [start, stop)


def blocks(num_directions: int, num_blocks: int) -> List[Block]:
    """``[0, num_directions)`` cut into at most ``num_blocks`` contiguous blocks of near-equal size."""
    count = max(1, min(num_blocks, num_directions))
    edges = [num_directions * i // count for i in range(count + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a] or [(0, 0)]


def assign(all_blocks: Sequence[Block], weights: Sequence[float]) -> List[List[Block]]:
    """Blocks per worker, about proportional to ``weights`` (speeds), interleaved in order.

    Each block in turn goes to the worker whose load after taking it, divided by its weight,
    is smallest (ties: the lower worker number), so equal weights give ``0, 1, 0, 1, ...``.
    Workers may end with no block when there are fewer blocks than workers.
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


def can_split(dirs: Directions) -> bool:
    return isinstance(dirs, (Coordinates, RandomDirections))


def subset(dirs: Directions, ids: Tensor) -> Directions:
    """The directions ``ids`` (ascending) of ``dirs`` as a direction set of their own, on the CPU.

    Coordinates keep the parameter-major order, so the subset's evaluations come in the
    order of the global ones; random directions are regenerated from the same seeds.
    """
    if isinstance(dirs, Coordinates):
        bounds = torch.searchsorted(ids, torch.tensor(dirs.offsets, dtype=ids.dtype)).tolist()
        indices = [idx.detach().cpu()[ids[bounds[j]:bounds[j + 1]] - dirs.offsets[j]]
                   for j, idx in enumerate(dirs.indices)]
        return Coordinates(indices, dirs.mus, dirs.scheme)
    if isinstance(dirs, RandomDirections):
        return SeedSubset(dirs, ids)
    raise TypeError(f"cannot split a {type(dirs).__name__} direction set (Coordinates or RandomDirections only)")


class SeedSubset(RandomDirections):
    """Random directions ``ids`` of a :class:`RandomDirections`, regenerated from the same seeds.

    Directions are drawn exactly as the driver draws them, on the device type it draws them
    on (a CUDA generator gives other numbers than a CPU one), and then handed out on the
    worker's parameter devices (``place``).
    """

    def __init__(self, parent: RandomDirections, ids: Tensor):
        self.__dict__.update({k: v for k, v in parent.__dict__.items() if k != "_norms"})
        self.ids = [int(i) for i in ids.tolist()]
        self.q = len(self.ids)
        self._norms = None
        self.masks = [m.detach().cpu() if m is not None else None for m in parent.masks]
        self.devices = [torch.device(d.type) for d in parent.devices]  # where directions are drawn
        self.targets = list(self.devices)                               # where they are used

    def place(self, devices: Sequence[torch.device]) -> "SeedSubset":
        """Draw on the driver's device type (masks moved there), hand directions out on ``devices``."""
        self.devices = [torch.device(d.type) for d in self.devices]
        self.masks = [m.to(d) if m is not None else None for m, d in zip(self.masks, self.devices)]
        self.targets = list(devices)
        return self

    def _raw(self, i: int, j: int, chunk: int = 0) -> Tensor:
        return super()._raw(self.ids[i], j, chunk)

    def _place(self, j: int, values: Tensor) -> Tensor:
        return values.to(self.targets[j])


def to_device(dirs: Directions, devices: Sequence[torch.device]) -> Directions:
    """A subset ready for parameters on ``devices`` (index tensors moved, draws re-targeted)."""
    if isinstance(dirs, Coordinates):
        return Coordinates([idx.to(d) for idx, d in zip(dirs.indices, devices)], dirs.mus, dirs.scheme)
    if isinstance(dirs, SeedSubset):
        return dirs.place(devices)
    return dirs


def scatter(dirs: Directions, ids: Tensor, piece_losses: Tensor, out: Tensor) -> None:
    """Write a piece's losses into the global loss vector ``out`` (``+`` block, then ``−`` block)."""
    n, m = dirs.num_directions, int(ids.numel())
    if piece_losses.shape[0] != m * dirs.num_signs:
        raise RuntimeError(f"a worker returned {piece_losses.shape[0]} losses for {m * dirs.num_signs} evaluations")
    ids = ids.to(out.device)
    for s in range(dirs.num_signs):
        out[s * n + ids] = piece_losses[s * m:(s + 1) * m].to(out.device, out.dtype)


def piece_size(piece: Optional[Sequence[Block]]) -> int:
    return sum(b - a for a, b in piece or ())
