"""Directions for ``B`` independent query points of dimension ``d`` (the rows of a black box).

:class:`PointDirections` is a :class:`~zeroth.estimators.Directions` whose every direction is
a ``(B, d)`` block: the same coordinate ``e_k`` in all rows (CGE) or an independent random
vector per row (RGE / SPSA). It exposes what the estimators' pure ``combine`` reads
(``num_directions``, ``num_signs``, ``dim``, ``dist``, ``mus``), so the coefficients come
from :meth:`Estimator.combine` unchanged, applied to all rows at once. Unlike the parameter
directions, these are materialised: black-box inputs are small and the program needs the
points anyway.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..estimators import Directions, Estimator


class PointDirections(Directions):
    """``n`` directions for each of ``batch`` points in ``R^dim`` (evaluation layout: + block, − block).

    CGE: ``n = dim`` coordinate vectors, the same in every row, stepped by the nominal μ
    (the point ``x + μe_k`` is rounded in ``x``'s dtype, and the gradient divides by μ).
    RGE/SPSA: ``n = q`` random vectors per row, ``(q, batch, dim)``, drawn on the CPU in
    float64 from ``generator`` (Gaussian, unit-sphere or ±1 as ``estimator.dist`` says).

    Args:
        estimator: a CGE (``kind="coordinates"``: reads ``mu``, ``scheme``) or an RGE/SPSA
            (``kind="random"``: reads ``mu``, ``q``, ``dist``, ``antithetic``).
        batch: number of independent query points ``B``.
        dim: dimension ``d`` of each point.
        generator: the CPU generator random directions are drawn from (None: torch's global RNG).
        dtype: dtype the random vectors are kept in (default float64).
        device: device the random vectors are kept on.

    Raises:
        TypeError: ``estimator`` is neither kind.
    """

    def __init__(
        self,
        estimator: Estimator,
        batch: int,
        dim: int,
        *,
        generator: Optional[torch.Generator] = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device = torch.device("cpu"),
    ):
        self.batch, self.dim = int(batch), int(dim)
        self.mus = [estimator.mu]
        self.dtype, self.device = dtype, device
        kind = getattr(estimator, "kind", None)
        if kind == "coordinates":
            self.dist = None
            self.q = self.dim
            self.num_signs = 2 if estimator.scheme == "central" else 1
            self.vectors: Optional[Tensor] = None  # coordinate k is e_k in every row
        elif kind == "random":
            self.dist = estimator.dist
            self.q = estimator.q
            self.num_signs = 2 if estimator.antithetic else 1
            self.vectors = self._draw(generator).to(device=device, dtype=dtype)  # (q, B, d)
        else:
            raise TypeError(f"estimator must estimate along coordinates (CGE) or random directions (RGE, SPSA), "
                            f"got {type(estimator).__name__} (kind={kind!r})")

    def _draw(self, generator: Optional[torch.Generator]) -> Tensor:
        """``q`` random directions per row, drawn (on the CPU, in float64) from ``generator``."""
        shape = (self.q, self.batch, self.dim)
        if self.dist == "rademacher":
            return torch.randint(0, 2, shape, generator=generator).to(torch.float64).mul_(2).sub_(1)
        u = torch.randn(shape, generator=generator, dtype=torch.float64)
        if self.dist == "sphere":  # uniform on each row's unit sphere: E[u uᵀ] = I/d, combine scales by d
            u = u / u.norm(dim=-1, keepdim=True)
        return u

    @property
    def num_directions(self) -> int:
        """``dim`` (CGE) or ``q`` (random directions), per point."""
        return self.q

    def points(self, x: Tensor) -> Tensor:
        """All evaluation points ``x + s·μ·dₑ``: shape ``(len(self), B, d)`` for ``x`` of shape ``(B, d)``."""
        mu = self.mus[0]
        signs = [1.0, -1.0][: self.num_signs]
        if self.vectors is None:
            k = torch.arange(self.dim, device=x.device)
            blocks = []
            for s in signs:
                p = x.unsqueeze(0).repeat(self.dim, 1, 1)
                p[k, :, k] += s * mu
                blocks.append(p)
            return torch.cat(blocks)
        step = self.vectors.to(x.dtype) * mu
        return torch.cat([x.unsqueeze(0) + s * step for s in signs])

    def gradient(self, coeffs: Tensor) -> Tensor:
        """``g_b = Σ_i c_ib d_ib / μ`` for coefficients ``(num_directions, B)``: a ``(B, d)`` tensor.

        CGE returns ``coeffs.t() / μ`` in the coefficients' dtype; random directions are
        combined in the directions' dtype (float64 by default).
        """
        mu = self.mus[0]
        if self.vectors is None:
            return coeffs.t() / mu
        return torch.einsum("ib,ibd->bd", coeffs.to(self.vectors.dtype), self.vectors) / mu
