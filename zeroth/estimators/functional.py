"""Gradients and Jacobians of plain functions of one tensor, from values only.

``zo_gradient(fun, x, estimator)`` and ``zo_jacobian(fun, x, estimator)`` are what a solver
(e.g. :mod:`zeroth.constrained`) or a black-box adapter needs: ``fun`` takes a tensor shaped
like ``x`` and returns a scalar (resp. a vector); ``x`` is never modified. ``estimator`` is any
:class:`zeroth.protocols.Estimator` (CGE, RGE, SPSA or one's own): its direction sets are used
through ``perturb``/``restore``/``accumulate`` only.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Union

import torch
from torch import Tensor

from ..objective import scalar_loss
from ..protocols import Directions, Estimator
from ..randomness import make_generator
from .estimators import ESTIMATORS


def _check_arguments(x: Any, estimator: Any, generator: Any) -> Estimator:
    """Refuse a bad ``x``/``estimator``/``generator`` with an error naming it; the estimator to use.

    ``estimator`` may be a registry name (``"cge"``, as ``ZOOptimizer`` takes) or any object with
    ``directions`` and ``combine`` (:class:`zeroth.protocols.Estimator`).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a floating-point torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"x: empty tensor (shape {tuple(x.shape)}); there is no coordinate to estimate")
    if isinstance(estimator, str):
        estimator = ESTIMATORS.create(estimator, "estimator")
    elif isinstance(estimator, type):
        raise TypeError(
            f"estimator must be an estimator instance or name, got the class {estimator.__name__}; "
            f"pass an instance, {estimator.__name__}(...), or a name ({', '.join(ESTIMATORS.names())})"
        )
    elif not (callable(getattr(estimator, "directions", None)) and callable(getattr(estimator, "combine", None))):
        raise TypeError(
            f"estimator must be an estimator name ({', '.join(ESTIMATORS.names())}) or an Estimator "
            f"instance (with directions and combine, e.g. CGE()), got {type(estimator).__name__}"
        )
    if generator is not None:
        make_generator(generator=generator)  # the one rule: a CPU torch.Generator (or None)
    return estimator


def _values(fun: Callable, x: Tensor, dirs: Directions, vector: bool):
    """ℓ(x) (if needed) and ℓ at every evaluation point of ``dirs``, on a private copy of x."""
    work = x.detach().clone()

    def call():
        y = fun(work.clone())
        if vector:
            y = torch.as_tensor(y).detach()
            return y.reshape(-1).to(torch.float64)
        return scalar_loss(y, who="fun", what="a scalar").to(torch.float64)

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
    estimator: Union[str, Estimator],
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor, int]:
    """A zeroth-order estimate of ∇f at ``x`` from values of ``f`` only.

    ``fun`` is called on a fresh, detached copy of each evaluation point (``x`` itself is never
    modified, and ``fun`` may keep or modify its argument); the calls are not wrapped in
    ``torch.no_grad()``. Perturbed points are set exactly (CGE: ``fl(x_k ± μ)``; random
    directions: a copy restored bitwise after each call).

    Args:
        fun: ``fun(t) -> scalar`` for a tensor ``t`` shaped like ``x``: a 0-d or 1-element
            tensor, a Python or numpy float. A NaN or infinite value is not refused: it gives
            NaN/inf entries in ``grad`` (as ``scipy.optimize.approx_fprime`` does), unlike
            :class:`~zeroth.ZOOptimizer`, which raises on a non-finite loss.
        x: the point, a non-empty floating-point tensor of any shape (μ is an absolute step in
            its units).
        estimator: an instance, e.g. ``CGE(mu=1e-6)`` (``d + 1`` calls),
            ``CGE(scheme="central")``, ``RGE(q=...)``, ``SPSA()``, or a registry name
            (``"cge"``, ``"rge"``, ``"spsa"``: default options), as ``ZOOptimizer`` takes.
        generator: a CPU ``torch.Generator`` random directions come from (None: torch's global
            RNG).

    Returns:
        ``(f0, grad, nfev)``: ``f0`` is f(x) as a 0-d float64 tensor (for two-sided schemes the
        mean of the two-sided values, equal to f(x) up to O(μ²)); ``grad`` is shaped like ``x``
        with its dtype and device; ``nfev`` counts the calls of ``fun``.

    Raises:
        TypeError: ``x`` is not a floating-point tensor (the message gives its type or dtype),
            ``estimator`` is neither a name nor an estimator instance (a class, None, ...),
            ``generator`` is not a ``torch.Generator``, or ``fun`` returns something that is
            not a real scalar.
        ValueError: ``x`` is empty, ``estimator`` is an unknown name, ``generator`` is not on
            the CPU, or ``fun`` returns a tensor with more than one element.
    """
    estimator = _check_arguments(x, estimator, generator)
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
    estimator: Union[str, Estimator],
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor, int]:
    """A zeroth-order estimate of the Jacobian of a vector-valued ``fun`` at ``x``.

    Row ``r`` of ``Ĵ`` is the estimator's gradient of output ``r``; all rows share the same
    evaluations (CGE: ``d + 1`` calls for the full Jacobian).

    Args:
        fun: ``fun(t) -> values`` for ``t`` shaped like ``x``; anything ``torch.as_tensor``
            accepts, flattened to ``m`` outputs (the same ``m`` at every point). NaN or
            infinite values give NaN/inf entries in ``jac`` (as ``scipy.optimize.approx_fprime``).
        x: the point, a non-empty floating-point tensor of any shape (μ is an absolute step in
            its units).
        estimator: an instance, e.g. ``CGE(mu=1e-6)``, ``RGE(q=...)``, or a registry name
            (``"cge"``, ``"rge"``, ``"spsa"``).
        generator: a CPU ``torch.Generator`` random directions come from (None: torch's global
            RNG).

    Returns:
        ``(y0, jac, nfev)``: ``y0`` the ``(m,)`` float64 values at ``x`` (two-sided schemes: the
        mean of the two-sided values); ``jac`` of shape ``(m, x.numel())`` in ``x``'s dtype
        (columns in ``x``'s row-major order); ``nfev`` the number of calls of ``fun``.

    Raises:
        TypeError: ``x`` is not a floating-point tensor, ``estimator`` is neither a name nor an
            estimator instance, or ``generator`` is not a ``torch.Generator``.
        ValueError: ``x`` is empty, ``estimator`` is an unknown name, or ``fun`` returns a
            different number of outputs at a perturbed point than at ``x`` (or than at the first
            perturbed point, for two-sided schemes); the message names the point and both shapes.
    """
    estimator = _check_arguments(x, estimator, generator)
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
