"""One rule for randomness arguments.

Objects that own a random stream (:class:`~zeroth.ZOOptimizer`, :class:`~zeroth.BlackBox`) take
``seed=`` (an int, or None: drawn from torch's global RNG) **or** ``generator=`` (a CPU
``torch.Generator`` they then draw from); the stream's state is saved in their ``state_dict``.
Functions that draw (:func:`~zeroth.zo_gradient`, :func:`~zeroth.estimate_gradient`,
``Estimator.directions``, ``MaskRule.select``) take ``generator=`` only (None: torch's global
RNG), as ``torch.randn`` does.
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch


def make_generator(seed: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Generator:
    """The CPU generator an object draws from: ``generator`` itself, or a new one seeded with ``seed``.

    Args:
        seed: an int seed (a fresh generator is seeded with it), or None.
        generator: a CPU ``torch.Generator`` to draw from (used as is, not copied), or None.
            With neither, a fresh generator is seeded from torch's global RNG (so
            ``torch.manual_seed`` makes the run reproducible).

    Returns:
        A CPU ``torch.Generator``.

    Raises:
        ValueError: both ``seed`` and ``generator`` are given, or ``generator`` is not on the CPU
            (directions are drawn on the CPU, then moved).
        TypeError: ``seed`` is not an int (bools refused), or ``generator`` is not a ``torch.Generator``.
    """
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if generator.device.type != "cpu":
            raise ValueError(
                f"generator must be a CPU generator (directions are drawn on the CPU), got {generator.device}"
            )
        return generator
    made = torch.Generator()
    made.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    return made
