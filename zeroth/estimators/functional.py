"""Gradients and Jacobians of plain functions of one tensor, from values only.

``zo_gradient(fun, x, estimator)`` and ``zo_jacobian(fun, x, estimator)`` are what a solver
(e.g. :mod:`zeroth.constrained`) or a black-box adapter needs: ``fun`` takes a tensor shaped
like ``x`` and returns a scalar (resp. a vector); ``x`` is never modified. ``estimator`` is any
:class:`zeroth.protocols.Estimator` (CGE, RGE, SPSA or one's own): its direction sets are used
through ``perturb``/``restore``/``accumulate`` only.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

from ..objective import scalar_loss
from ..protocols import Directions, Estimator


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
    values: List[Tensor] = []
    ref_name = "x" if base is not None else "evaluation point 0"  # what every output's size is checked against
    for e in range(len(dirs)):
        token = dirs.perturb([work], e, exact=True)
        try:
            y = call()
        finally:
            dirs.restore([work], e, token)
        if vector:
            ref = base if base is not None else (values[0] if values else y)
            if y.shape != ref.shape:  # a difference of outputs would broadcast: a silently wrong Jacobian
                raise ValueError(
                    f"fun returned {y.numel()} output(s) at evaluation point {e} (shape "
                    f"{tuple(y.shape)}) but {ref.numel()} at {ref_name} (shape {tuple(ref.shape)}): "
                    "fun must return the same number of outputs at every point"
                )
        values.append(y)
    return base, torch.stack(values), len(values) + (base is not None)


def zo_gradient(
    fun: Callable[[Tensor], object],
    x: Tensor,
    estimator: Estimator,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor, int]:
    """A zeroth-order estimate of ∇f at ``x`` from values of ``f`` only.

    ``fun`` is called on a fresh, detached copy of each evaluation point (``x`` itself is never
    modified, and ``fun`` may keep or modify its argument); the calls are not wrapped in
    ``torch.no_grad()``. Perturbed points are set exactly (CGE: ``fl(x_k ± μ)``; random
    directions: a copy restored bitwise after each call).

    Args:
        fun: ``fun(t) -> scalar`` for a tensor ``t`` shaped like ``x``: a 0-d or 1-element
            tensor, a Python or numpy float.
        x: the point, a floating-point tensor of any shape (μ is an absolute step in its units).
        estimator: e.g. ``CGE(mu=1e-6)`` (``d + 1`` calls), ``CGE(scheme="central")``,
            ``RGE(q=...)``, ``SPSA()``.
        generator: where random directions come from (None: torch's global RNG).

    Returns:
        ``(f0, grad, nfev)``: ``f0`` is f(x) as a 0-d float64 tensor (for two-sided schemes the
        mean of the two-sided values, equal to f(x) up to O(μ²)); ``grad`` is shaped like ``x``
        with its dtype and device; ``nfev`` counts the calls of ``fun``.

    Raises:
        TypeError: ``x`` is not a floating-point tensor, or ``fun`` returns something that is
            not a real scalar.
        ValueError: ``fun`` returns a tensor with more than one element.
    """
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
    """A zeroth-order estimate of the Jacobian of a vector-valued ``fun`` at ``x``.

    Row ``r`` of ``Ĵ`` is the estimator's gradient of output ``r``; all rows share the same
    evaluations (CGE: ``d + 1`` calls for the full Jacobian).

    Args:
        fun: ``fun(t) -> values`` for ``t`` shaped like ``x``; anything ``torch.as_tensor``
            accepts, flattened to ``m`` outputs (the same ``m`` at every point).
        x: the point, a floating-point tensor of any shape (μ is an absolute step in its units).
        estimator: e.g. ``CGE(mu=1e-6)``, ``RGE(q=...)``.
        generator: where random directions come from (None: torch's global RNG).

    Returns:
        ``(y0, jac, nfev)``: ``y0`` the ``(m,)`` float64 values at ``x`` (two-sided schemes: the
        mean of the two-sided values); ``jac`` of shape ``(m, x.numel())`` in ``x``'s dtype
        (columns in ``x``'s row-major order); ``nfev`` the number of calls of ``fun``.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: ``fun`` returns a different number of outputs at a perturbed point than at
            ``x`` (or than at the first perturbed point, for two-sided schemes); the message
            names the point and both shapes.
    """
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
