"""Gradient estimators from loss values alone: CGE, RGE, SPSA.

Each estimator is two pure pieces (optax style):

* ``directions(params, ...)`` — which points to evaluate (a :class:`Directions`);
* ``combine(dirs, base, losses)`` — per-direction coefficients ``c`` such that the
  estimate is ``ĝ_j = Σ_i c_i d_ij / μ_j`` (``dirs.accumulate`` applies that sum).

Forward differences (DeepZero's notation, ``φ = d`` for sphere directions, else 1)::

    CGE:  ĝ = Σ_k (ℓ(θ + μ e_k) − ℓ(θ)) / μ · e_k                      (d + 1 evaluations)
    RGE:  ĝ = (1/q) Σ_i φ (ℓ(θ + μ u_i) − ℓ(θ)) / μ · u_i              (q + 1 evaluations)

Central / antithetic variants replace ``ℓ(θ + μ d) − ℓ(θ)`` by ``(ℓ(θ + μ d) − ℓ(θ − μ d))/2``
(2d or 2q evaluations, error O(μ²) instead of O(μ)). SPSA is the antithetic RGE with
q = 1 and Rademacher (or Gaussian, as in MeZO) directions.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..registry import Registry
from .directions import Coordinates, Directions, RandomDirections


def _check_mu(mu) -> float:
    if isinstance(mu, bool) or not isinstance(mu, numbers.Real) or not math.isfinite(mu) or mu <= 0:
        raise ValueError(f"Invalid mu value: {mu!r} (mu must be a finite number > 0)")
    return float(mu)


def _check_q(q) -> int:
    if isinstance(q, bool) or not isinstance(q, numbers.Integral) or q < 1:
        raise ValueError(f"Invalid q value: {q!r} (q must be an integer >= 1)")
    return int(q)


def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"Invalid {name} value: {value!r} (expected one of {', '.join(map(repr, choices))})")
    return value


def draw_seed(generator: Optional[torch.Generator]) -> int:
    """A 62-bit seed from ``generator`` (the global RNG when None)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


class Estimator:
    """Base class of gradient estimators: ``directions`` + ``combine``."""

    name = "estimator"

    def __init__(self, mu: float):
        self.mu = _check_mu(mu)

    def directions(
        self,
        params: Sequence[Tensor],
        *,
        mus: Optional[Sequence[float]] = None,
        generator: Optional[torch.Generator] = None,
        masks: Optional[Sequence[Optional[Tensor]]] = None,
    ) -> Directions:
        raise NotImplementedError

    def combine(self, dirs: Directions, base: Optional[Tensor], losses: Tensor) -> Tensor:
        raise NotImplementedError

    def num_evaluations(self, dim: int) -> int:
        """Loss evaluations per step for ``dim`` coordinates, f(θ) included when needed."""
        raise NotImplementedError

    def _mus(self, params, mus):
        if mus is None:
            return [self.mu] * len(params)
        if len(mus) != len(params):
            raise ValueError("mus must have one entry per parameter")
        return [_check_mu(m) for m in mus]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _differences(dirs: Directions, base: Optional[Tensor], losses: Tensor) -> Tensor:
    """``ℓ₊ − ℓ(θ)`` (one-sided) or ``(ℓ₊ − ℓ₋)/2`` (two-sided), one row per direction."""
    n = dirs.num_directions
    if losses.shape[0] != len(dirs):
        raise ValueError(f"losses: expected {len(dirs)} values, got {losses.shape[0]}")
    if dirs.num_signs == 2:
        return (losses[:n] - losses[n:]) / 2
    if base is None:
        raise ValueError("base: one-sided differences need the loss at θ")
    return losses - base


ESTIMATORS = Registry("estimator", Estimator)


@ESTIMATORS.register("cge")
class CGE(Estimator):
    """Coordinate-wise gradient estimate: one finite difference per (selected) coordinate."""

    name = "cge"
    kind = "coordinates"

    def __init__(self, mu: float = 1e-3, scheme: str = "forward"):
        super().__init__(mu)
        self.scheme = _check_choice("scheme", scheme, ("forward", "central"))

    def directions(self, params, *, mus=None, generator=None, masks=None) -> Coordinates:
        mus = self._mus(params, mus)
        if masks is None:
            masks = [None] * len(params)
        indices = [
            torch.arange(p.numel(), device=p.device) if m is None else m.to(p.device)
            for p, m in zip(params, masks)
        ]
        return Coordinates(indices, mus, self.scheme, params)

    def combine(self, dirs, base, losses):
        return _differences(dirs, base, losses)

    def num_evaluations(self, dim: int) -> int:
        return 2 * dim if self.scheme == "central" else dim + 1


@ESTIMATORS.register("rge")
class RGE(Estimator):
    """Randomized gradient estimate averaged over ``q`` random directions (seed trick)."""

    name = "rge"
    kind = "random"
    _dists = ("gaussian", "sphere", "rademacher")

    def __init__(self, q: int = 1, mu: float = 1e-3, dist: str = "gaussian", antithetic: bool = False):
        super().__init__(mu)
        self.q = _check_q(q)
        self.dist = _check_choice("dist", dist, self._dists)
        if not isinstance(antithetic, bool):
            raise TypeError(f"antithetic must be a bool, got {type(antithetic).__name__}")
        self.antithetic = antithetic

    def directions(self, params, *, mus=None, generator=None, masks=None) -> RandomDirections:
        return RandomDirections(
            params, draw_seed(generator), self.q, self._mus(params, mus), self.dist, self.antithetic, masks
        )

    def combine(self, dirs, base, losses):
        scale = (dirs.dim if dirs.dist == "sphere" else 1.0) / dirs.num_directions
        return _differences(dirs, base, losses) * scale

    def num_evaluations(self, dim: int) -> int:
        return 2 * self.q if self.antithetic else self.q + 1


@ESTIMATORS.register("spsa")
class SPSA(RGE):
    """Simultaneous perturbation: antithetic RGE, Rademacher (or Gaussian = MeZO) directions."""

    name = "spsa"

    def __init__(self, mu: float = 1e-3, q: int = 1, dist: str = "rademacher"):
        super().__init__(q=q, mu=mu, dist=dist, antithetic=True)
