"""The activation kinds the kernels implement, and which module each one stands for.

:class:`Activation` is the Python spelling of ``enum Activation`` in
``zeroth/csrc/zeroth_math.h`` (the definition the C++ and CUDA code share);
``tests/ops/test_checks.py`` fails if the two differ in a name or a value.
"""

from __future__ import annotations

import enum
from typing import Optional, Tuple

from torch import nn


class Activation(enum.IntEnum):
    """Elementwise activations with a compiled difference kernel (values as in ``zeroth_math.h``)."""

    RELU = 0
    LEAKY_RELU = 1
    GELU = 2  # the exact (erf) form only, not approximate="tanh"
    SILU = 3
    TANH = 4
    SIGMOID = 5


PIECEWISE_LINEAR = frozenset({Activation.RELU, Activation.LEAKY_RELU})
"""Kinds whose difference has an exact form in the operands' precision (see ``vectorized``)."""


def activation_kind(module: nn.Module) -> Optional[Tuple[Activation, float]]:
    """``(kind, negative_slope)`` for an activation module the kernels implement, else None.

    Args:
        module: any module; ``nn.ReLU``, ``nn.LeakyReLU``, ``nn.GELU`` (``approximate="none"``),
            ``nn.SiLU``, ``nn.Tanh`` and ``nn.Sigmoid`` have a kind (exact types or subclasses).

    Returns:
        The kind and the slope for negative inputs (LeakyReLU's ``negative_slope``, else 0.0),
        or None when no kernel implements the module.
    """
    if isinstance(module, nn.ReLU):
        return Activation.RELU, 0.0
    if isinstance(module, nn.LeakyReLU):
        return Activation.LEAKY_RELU, float(module.negative_slope)
    if isinstance(module, nn.GELU) and module.approximate == "none":
        return Activation.GELU, 0.0
    if isinstance(module, nn.SiLU):
        return Activation.SILU, 0.0
    if isinstance(module, nn.Tanh):
        return Activation.TANH, 0.0
    if isinstance(module, nn.Sigmoid):
        return Activation.SIGMOID, 0.0
    return None
