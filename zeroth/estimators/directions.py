"""Directions: *what* to perturb, in the flat space of a list of parameter tensors.

A direction set describes ``n`` evaluation points ``θ + s·μ_j·d_e`` (one per evaluation
``e``) without materialising the directions when it need not:

* :class:`Coordinates` — unit vectors ``e_k`` of selected coordinates (CGE);
* :class:`RandomDirections` — Gaussian / sphere / Rademacher vectors regenerated from a
  seed on demand (RGE, SPSA: the MeZO "seed trick", so a step never stores them).

Evaluation layout (shared by every evaluator): for two-sided schemes the first half of the
evaluations are the ``+`` points and the second half the ``−`` points, in the same order.

``perturb``/``restore`` change parameters in place (used by the sequential evaluator);
``accumulate`` turns per-direction coefficients ``c`` into ``grad_j += Σ_i c_i d_ij / μ_j``.
"""
from __future__ import annotations

import bisect
import math
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from .. import ops

_MASK64 = (1 << 64) - 1


CHUNK = 1 << 20
"""Entries of a random direction drawn at once: perturbing, restoring and accumulating never
hold more of a direction than this (4 MiB in float32), whatever the size of a parameter."""


def _mix_seed(seed: int, i: int, j: int, chunk: int = 0) -> int:
    """A well-spread 63-bit seed for chunk ``chunk`` of direction ``i`` of parameter ``j`` (splitmix64 rounds)."""
    z = (seed + 0x9E3779B97F4A7C15 * (i + 1) + 0xBF58476D1CE4E5B9 * (j + 1) + 0x94D049BB133111EB * chunk) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


def _element(t: Tensor, k: int):
    """Index of the ``k``-th element of ``t`` in row-major (logical) order, whatever its strides."""
    if t.dim() <= 1:
        return (k,) if t.dim() else ()
    at = []
    for size in reversed(t.shape):
        k, r = divmod(k, size)
        at.append(r)
    return tuple(reversed(at))


class Directions:
    """Base class: ``len()`` evaluations, ``needs_base`` says whether f(θ) is needed too."""

    num_signs: int = 1
    mus: List[float]

    @property
    def needs_base(self) -> bool:
        return self.num_signs == 1

    @property
    def num_directions(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_directions * self.num_signs

    def sign(self, e: int) -> float:
        """+1 for the first block of evaluations, −1 for the second (two-sided schemes)."""
        return 1.0 if e < self.num_directions else -1.0


class Coordinates(Directions):
    """Coordinate directions for CGE: ``indices[j]`` are flat indices into parameter ``j``.

    ``scheme="forward"`` gives one evaluation per coordinate (plus f(θ)),
    ``"central"`` two (``+μ`` then ``−μ`` blocks).
    """

    def __init__(self, indices: Sequence[Tensor], mus: Sequence[float], scheme: str = "forward"):
        if len(indices) != len(mus):
            raise ValueError("indices and mus must have one entry per parameter")
        self.indices = [idx.reshape(-1).to(torch.long) for idx in indices]
        self.mus = [float(m) for m in mus]
        self.scheme = scheme
        self.num_signs = 2 if scheme == "central" else 1
        counts = [int(idx.numel()) for idx in self.indices]
        self.offsets = [0]
        for c in counts:
            self.offsets.append(self.offsets[-1] + c)
        self._lists: Optional[List[List[int]]] = None

    @property
    def num_directions(self) -> int:
        return self.offsets[-1]

    def locate(self, e: int):
        """(parameter j, flat index k, sign) of evaluation ``e``."""
        n = self.num_directions
        c = e % n
        j = bisect.bisect_right(self.offsets, c) - 1
        if self._lists is None:
            self._lists = [idx.tolist() for idx in self.indices]
        return j, self._lists[j][c - self.offsets[j]], self.sign(e)

    def perturb(self, params: Sequence[Tensor], e: int, exact: bool = True):
        j, k, s = self.locate(e)
        at = _element(params[j], k)
        old = params[j][at].clone()
        params[j][at] = old + s * self.mus[j]
        return (j, at, old)

    def restore(self, params: Sequence[Tensor], e: int, token) -> None:
        j, at, old = token
        params[j][at] = old

    def accumulate(self, coeffs: Tensor, grads: Sequence[Tensor], scales: Optional[Sequence[float]] = None) -> None:
        """``grads[j].flat[k] += scales[j] · c_k / μ_j`` for every selected coordinate ``k``."""
        for j, idx in enumerate(self.indices):
            if idx.numel() == 0:
                continue
            g = grads[j]
            c = coeffs[self.offsets[j]:self.offsets[j + 1]]
            scale = (1.0 if scales is None else scales[j]) / self.mus[j]
            if g.is_contiguous():  # the fused scatter kernel (zeroth.ops)
                ops.scatter_scaled_add(g.view(-1), idx.to(g.device), c.to(g.device), scale)
            else:  # e.g. channels_last: flat indices are in row-major (logical) order
                step = torch.zeros(g.numel(), dtype=g.dtype, device=g.device)
                step.index_add_(0, idx.to(g.device), c.to(device=g.device, dtype=g.dtype) * scale)
                g.add_(step.view(g.shape))


class RandomDirections(Directions):
    """``q`` random directions regenerated from ``seed`` (never stored).

    ``dist``: ``"gaussian"`` (N(0, I)), ``"sphere"`` (uniform on the unit sphere of the
    selected coordinates, so ``E[u uᵀ] = I/d``) or ``"rademacher"`` (±1).
    ``antithetic=True`` evaluates ``θ ± μu`` (two-sided) instead of ``θ + μu`` and ``θ``.
    ``masks[j]`` (optional) restricts parameter ``j`` to those flat indices (zero elsewhere).
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        seed: int,
        q: int,
        mus: Sequence[float],
        dist: str = "gaussian",
        antithetic: bool = False,
        masks: Optional[Sequence[Optional[Tensor]]] = None,
    ):
        self.seed = int(seed)
        self.q = int(q)
        self.mus = [float(m) for m in mus]
        self.dist = dist
        self.num_signs = 2 if antithetic else 1
        self.shapes = [p.shape for p in params]
        self.devices = [p.device for p in params]
        self.dtypes = [p.dtype for p in params]
        self.masks = list(masks) if masks is not None else [None] * len(self.shapes)
        self.dim = sum(
            int(m.numel()) if m is not None else int(math.prod(s)) for m, s in zip(self.masks, self.shapes)
        )
        self._norms: Optional[List[float]] = None

    @property
    def num_directions(self) -> int:
        return self.q

    def _size(self, j: int) -> int:
        """Number of selected entries of parameter ``j``."""
        mask = self.masks[j]
        return int(mask.numel()) if mask is not None else int(math.prod(self.shapes[j]))

    def _chunks(self, j: int) -> range:
        """The chunk numbers of parameter ``j`` (at least one, possibly empty)."""
        return range(max(1, -(-self._size(j) // CHUNK)))

    def _raw(self, i: int, j: int, chunk: int = 0) -> Tensor:
        """Chunk ``chunk`` (entries ``chunk·CHUNK ...``) of the unnormalised direction ``i`` in parameter ``j``.

        Each chunk has a generator of its own, so any chunk can be drawn alone.
        """
        n = max(0, min(CHUNK, self._size(j) - chunk * CHUNK))
        g = torch.Generator(device=self.devices[j])
        g.manual_seed(_mix_seed(self.seed, i, j, chunk))
        if self.dist == "rademacher":
            r = torch.randint(0, 2, (n,), generator=g, device=self.devices[j], dtype=self.dtypes[j])
            return r.mul_(2).sub_(1)  # drawn in the parameter dtype: no int64 chunk
        return torch.randn(n, generator=g, device=self.devices[j], dtype=self.dtypes[j])

    def _place(self, j: int, values: Tensor) -> Tensor:
        """Values drawn for parameter ``j`` on the device that parameter lives on."""
        return values

    def _pieces(self, i: int, j: int):
        """``(start, stop, values)``: direction ``i`` on the selected entries of parameter ``j``, a chunk at a time."""
        scale = 1.0 / self.norm(i) if self.dist == "sphere" else None
        for c in self._chunks(j):
            raw = self._raw(i, j, c)
            if scale is not None:
                raw = raw.mul_(scale)
            yield c * CHUNK, c * CHUNK + raw.numel(), self._place(j, raw)

    def norm(self, i: int) -> float:
        """Euclidean norm of raw direction ``i`` (computed once for all ``q``, then cached)."""
        if self._norms is None:
            self._norms = []
            for ii in range(self.q):
                sq = 0.0
                for j in range(len(self.shapes)):
                    for c in self._chunks(j):
                        sq += float(self._raw(ii, j, c).double().pow(2).sum())
                self._norms.append(math.sqrt(sq))
        return self._norms[i]

    def direction(self, i: int, j: int) -> Tensor:
        """Direction ``i`` restricted to parameter ``j``, shaped like that parameter (materialised)."""
        parts = [v for _, _, v in self._pieces(i, j)]
        raw = parts[0] if len(parts) == 1 else torch.cat(parts)
        mask = self.masks[j]
        if mask is None:
            return raw.view(self.shapes[j])
        full = torch.zeros(math.prod(self.shapes[j]), device=raw.device, dtype=self.dtypes[j])
        full[mask.to(raw.device)] = raw
        return full.view(self.shapes[j])

    def add_to(self, tensors: Sequence[Tensor], i: int, alphas: Sequence[float]) -> None:
        """``tensors[j] += alphas[j] · u_ij`` for every ``j``, a chunk at a time (never a whole direction)."""
        for j, t in enumerate(tensors):
            alpha = alphas[j]
            if alpha == 0.0:
                continue
            if not t.is_contiguous():
                t.add_(self.direction(i, j).to(t.dtype), alpha=alpha)
                continue
            flat, mask = t.view(-1), self.masks[j]
            for a, b, v in self._pieces(i, j):
                if mask is None:
                    flat[a:b].add_(v.to(t.dtype), alpha=alpha)
                else:
                    flat.index_add_(0, mask[a:b].to(t.device), v.to(t.dtype), alpha=alpha)

    def perturb(self, params: Sequence[Tensor], e: int, exact: bool = True):
        i, s = e % self.q, self.sign(e)
        backup = [p.clone() for p in params] if exact else None
        self.add_to(params, i, [s * mu for mu in self.mus])
        return backup

    def restore(self, params: Sequence[Tensor], e: int, token) -> None:
        if token is not None:
            for p, b in zip(params, token):
                p.copy_(b)
            return
        i, s = e % self.q, self.sign(e)
        self.add_to(params, i, [-s * mu for mu in self.mus])

    def accumulate(self, coeffs: Tensor, grads: Sequence[Tensor], scales: Optional[Sequence[float]] = None) -> None:
        """``grads[j] += scales[j] · Σ_i c_i u_ij / μ_j``, regenerating each ``u_i`` a chunk at a time."""
        scales = [1.0] * len(grads) if scales is None else scales
        for i, c in enumerate(coeffs.tolist()):
            if c != 0.0:
                self.add_to(grads, i, [c * sc / mu for sc, mu in zip(scales, self.mus)])
