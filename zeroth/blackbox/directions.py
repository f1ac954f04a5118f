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

from typing import Optional, Protocol, cast

import torch
from torch import Tensor

from ..estimators import Directions, Estimator
from ..estimators.directions import _applied_steps


class _CoordinateEstimator(Protocol):
    """What :class:`PointDirections` reads of a ``kind="coordinates"`` estimator (CGE)."""

    mu: float
    scheme: str


class _RandomEstimator(Protocol):
    """What :class:`PointDirections` reads of a ``kind="random"`` estimator (RGE, SPSA)."""

    mu: float
    q: int
    dist: str
    antithetic: bool


class PointDirections(Directions):
    """``n`` directions for each of ``batch`` points in ``R^dim`` (evaluation layout: + block, − block).

    CGE: ``n = dim`` coordinate vectors, the same in every row. Coordinate ``k`` of row ``b``
    moves to ``fl(x_bk ± μ)`` in ``x``'s dtype (a value that would not move takes one ulp
    instead), and the gradient divides by the step actually taken, per row and coordinate:
    ``h₊ = |fl(x + μ) − x|`` (forward) or ``(h₊ + h₋)/2`` (central) — as the parameter CGE
    (:class:`~zeroth.estimators.directions.Coordinates`) does. In float16 at 8 with μ = 1e-2
    the step taken is 2⁻⁷ = 0.78 μ; in bfloat16 it is one ulp, 2⁻⁴ (``8 + 1e-2`` rounds to 8).

    RGE/SPSA: ``n = q`` random vectors per row, ``u`` of shape ``(q, batch, dim)``, drawn on the
    CPU in float64 from ``generator`` (Gaussian, unit-sphere or ±1 as ``estimator.dist``
    says). The evaluation points are ``fl(x ± μu)``: computed in float64 and rounded once to
    ``x``'s dtype. The gradient is ``Σ_i c_i u_i / μ`` with the drawn (float64) ``u``, not the
    applied ``(fl(x + μu) − x)/μ``: the rounding is a quantisation of ``μu`` on ``x``'s grid,
    and pairing the differences with the drawn ``u`` keeps the estimate of a linear function
    nearly unbiased while the applied vector, paired with itself, adds the rounding's
    variance (measured on a linear function, bfloat16, x = 8, μ = 0.03, Gaussian directions,
    mean of 10⁵: 1.00× the gradient with ``u``, 1.20–1.24× with the applied vectors; float16
    at μ = 1e-2: 1.01× and 1.04×). Choose μ of at least a few ulps of ``x``: a point that
    does not move contributes 0 (bfloat16 at 8 with μ = 1e-2: 0.39× either way).

    Args:
        estimator: a CGE (``kind="coordinates"``: reads ``mu``, ``scheme``) or an RGE/SPSA
            (``kind="random"``: reads ``mu``, ``q``, ``dist``, ``antithetic``).
        batch: number of independent query points ``B``.
        dim: dimension ``d`` of each point.
        generator: the CPU generator random directions are drawn from (None: torch's global RNG).
        dtype: dtype the random vectors are kept in (default float64).
        device: device the random vectors are kept on.

    Attributes:
        spans: CGE only, set by :meth:`points`: ``(B, d)`` float64, what each coordinate's
            difference is divided by (``h₊`` or ``(h₊ + h₋)/2``).

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
        device: Optional[torch.device] = None,
    ):
        device = torch.device("cpu") if device is None else device
        self.batch, self.dim = int(batch), int(dim)
        self.mus = [estimator.mu]
        self.dtype, self.device = dtype, device
        kind = getattr(estimator, "kind", None)
        # ``kind`` names the estimator's family and with it the attributes read here (see Args)
        if kind == "coordinates":
            cge = cast(_CoordinateEstimator, estimator)
            self.dist: Optional[str] = None
            self.q = self.dim
            self.num_signs = 2 if cge.scheme == "central" else 1
            self.vectors: Optional[Tensor] = None  # coordinate k is e_k in every row
        elif kind == "random":
            rge = cast(_RandomEstimator, estimator)
            self.dist = rge.dist
            self.q = rge.q
            self.num_signs = 2 if rge.antithetic else 1
            self.vectors = self._draw(generator).to(device=device, dtype=dtype)  # (q, B, d)
        else:
            raise TypeError(
                f"estimator must estimate along coordinates (CGE) or random directions (RGE, SPSA), "
                f"got {type(estimator).__name__} (kind={kind!r})"
            )

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
        """All evaluation points ``fl(x + s·μ·dₑ)`` in ``x``'s dtype: ``(len(self), B, d)`` for ``x``: ``(B, d)``.

        CGE: coordinate ``k`` set to ``fl(x_k ± μ)`` (one ulp where that would not move it);
        the steps taken are kept in :attr:`spans` for :meth:`gradient`. Random directions:
        ``x ± μu`` computed in float64, rounded once.
        """
        mu = self.mus[0]
        signs = [1.0, -1.0][: self.num_signs]
        if self.vectors is None:
            k = torch.arange(self.dim, device=x.device)
            blocks, steps = [], []
            for s in signs:
                values, taken = _applied_steps(x, mu, s)  # (B, d) each
                p = x.unsqueeze(0).repeat(self.dim, 1, 1)
                p[k, :, k] = values.t()  # p[k, b, k] = values[b, k]
                blocks.append(p)
                steps.append(taken)
            self.spans = steps[0] if len(steps) == 1 else (steps[0] + steps[1]) / 2
            return torch.cat(blocks)
        step = self.vectors.to(device=x.device, dtype=torch.float64) * mu
        wide = x.to(torch.float64).unsqueeze(0)
        return torch.cat([(wide + s * step).to(x.dtype) for s in signs])

    def gradient(self, coeffs: Tensor) -> Tensor:
        """The ``(B, d)`` estimate from coefficients ``(num_directions, B)``.

        CGE: ``g_bk = c_kb / span_bk``, the step actually taken (:attr:`spans`, float64);
        random directions: ``g_b = Σ_i c_ib u_ib / μ`` in the directions' dtype (float64 by
        default), with the drawn ``u``.

        Raises:
            RuntimeError: CGE, before :meth:`points` (the steps are not known yet).
        """
        mu = self.mus[0]
        if self.vectors is None:
            spans = getattr(self, "spans", None)
            if spans is None:
                raise RuntimeError("PointDirections.gradient: call points(x) first (CGE divides by the steps taken)")
            return coeffs.t() / spans.to(coeffs.device)
        return torch.einsum("ib,ibd->bd", coeffs.to(self.vectors.dtype), self.vectors) / mu
