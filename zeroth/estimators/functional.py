"""Gradients and Jacobians of plain functions of one tensor, from values only.

``zo_gradient(fun, x, estimator)`` and ``zo_jacobian(fun, x, estimator)`` are what a solver
(e.g. :mod:`zeroth.constrained`) or a black-box adapter needs: ``fun`` takes a tensor shaped
like ``x`` and returns a scalar (resp. a vector); ``x`` is never modified.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from ..objective import scalar_loss
from .directions import Directions
from .estimators import Estimator


def _values(fun: Callable, x: Tensor, dirs: Directions, vector: bool):
    """ℓ(x) (if needed) and ℓ at every evaluation point of ``dirs``, on a private copy of x."""
    work = x.detach().clone()

    def call():
        y = fun(work.clone())
        if vector:
            y = torch.as_tensor(y).detach()
            return y.reshape(-1).to(torch.float64)
        return scalar_loss(y).to(torch.float64)

    base = call() if dirs.needs_base else None
    values = []
    for e in range(len(dirs)):
        token = dirs.perturb([work], e, exact=True)
        try:
            values.append(call())
        finally:
            dirs.restore([work], e, token)
    return base, torch.stack(values), len(values) + (base is not None)


def zo_gradient(
    fun: Callable[[Tensor], object],
    x: Tensor,
    estimator: Estimator,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor, int]:
    """``(f(x), ĝ, nfev)``: a ZO estimate of ∇f at ``x`` (for central schemes f(x) is the
    mean of the two-sided values, equal to f(x) up to O(μ²))."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point torch.Tensor")
    dirs = estimator.directions([x], generator=generator)
    base, values, nfev = _values(fun, x, dirs, vector=False)
    coeffs = estimator.combine(dirs, base, values)
    grad = torch.zeros_like(x)
    dirs.accumulate(coeffs, [grad])
    f0 = base if base is not None else values.mean()
    return f0, grad, nfev


def zo_jacobian(
    fun: Callable[[Tensor], object],
    x: Tensor,
    estimator: Estimator,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor, int]:
    """``(y(x), Ĵ, nfev)`` with ``Ĵ`` of shape ``(m, x.numel())`` for a vector-valued ``fun``."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point torch.Tensor")
    dirs = estimator.directions([x.reshape(-1)], generator=generator)
    base, values, nfev = _values(lambda v: fun(v.view_as(x)), x.reshape(-1), dirs, vector=True)
    coeffs = estimator.combine(dirs, base, values)  # (directions, m)
    rows = []
    for r in range(coeffs.shape[1]):
        row = torch.zeros(x.numel(), dtype=x.dtype, device=x.device)
        dirs.accumulate(coeffs[:, r], [row])
        rows.append(row)
    y0 = base if base is not None else values.mean(0)
    return y0, torch.stack(rows) if rows else torch.zeros(0, x.numel(), dtype=x.dtype), nfev
