"""Pure-PyTorch fast forms, used where the compiled kernels are not (``ZEROTH_OPS=python``,
a failed build, CUDA without the CUDA kernels); faster than the float64 reference.

The piecewise-linear activations (ReLU, LeakyReLU) need no float64 to form
``σ(a + Δ) − σ(a)`` accurately: on the same side of 0 the difference is ``Δ`` or ``slope·Δ``
exactly, and crossing 0 needs ``|a| < |Δ|``, so no term is larger than ``Δ`` and no
cancellation occurs. The result equals the float64 reference rounded to Δ's dtype up to a
few ulp of Δ, in about a third of the memory traffic.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .activations import PIECEWISE_LINEAR  # noqa: F401  (ReLU, LeakyReLU: the kinds this module serves)


def piecewise_linear_difference(a: Tensor, delta: Tensor, slope: float) -> Tensor:
    """``σ(a + Δ_k) − σ(a)`` for ``σ(x) = x`` (x > 0), ``slope·x`` (x ≤ 0); ``a`` broadcast over K.

    Tests ``a + Δ ≤ 0`` (not ``> 0``) so that a NaN in Δ reaches the result.
    """
    a = a.to(delta.dtype)
    x1 = a + delta
    neg1 = x1 <= 0
    pos0 = a > 0
    if slope == 0.0:
        return torch.where(neg1, torch.where(pos0, -a, torch.zeros_like(a)), torch.where(pos0, delta, x1))
    down = torch.where(pos0, slope * x1 - a, slope * delta)  # ends at or below 0
    up = torch.where(pos0, delta, x1 - slope * a)  # ends above 0
    return torch.where(neg1, down, up)
