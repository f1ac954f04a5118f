"""The evaluator interface: losses at θ + s·μ·dₑ for every evaluation of a direction set."""
from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ..estimators.directions import Directions
from ..registry import Registry


class Losses(NamedTuple):
    """``base`` = ℓ(θ) (None when the scheme does not need it); ``perturbed[e]`` = ℓ at evaluation e."""

    base: Optional[Tensor]
    perturbed: Tensor

    @property
    def count(self) -> int:
        """Number of loss evaluations these values cost."""
        return int(self.perturbed.shape[0]) + (self.base is not None)


class Evaluator:
    """Base class: ``supports(objective, dirs)`` and ``evaluate(objective, params, dirs)``.

    Every evaluator must return the same values as :class:`~zeroth.engine.Sequential`
    (up to floating-point reordering) and must leave parameters bitwise unchanged.
    """

    name = "evaluator"

    def supports(self, objective: Any, dirs: Optional[Directions] = None,
                 params: Optional[Sequence[Tensor]] = None) -> bool:
        """Whether this evaluator can evaluate ``dirs`` of ``params`` on ``objective``."""
        return True

    def evaluate(self, objective: Any, params: Sequence[Tensor], dirs: Directions) -> Losses:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


EVALUATORS = Registry("evaluator", Evaluator)


class StepState:
    """Common random numbers and module state for all evaluations of one step.

    Every evaluation starts from the same RNG state (so dropout or noise is the same for
    all perturbations and cancels in the differences) and the same module buffers (so
    BatchNorm running statistics change once per step, as in one first-order step, not
    once per evaluation). At the end the RNG and buffers are left as after the first
    evaluation.
    """

    def __init__(self, objective: Any, params: Sequence[Tensor]):
        self._cuda = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
        self._rng = self._get_rng()
        getter = getattr(objective, "state_tensors", None)
        self._buffers: List[Tensor] = list(getter()) if callable(getter) else []
        self._initial = [b.clone() for b in self._buffers]
        self._after_first = None
        self._buffer_snapshot: Optional[List[Tensor]] = None

    def _get_rng(self):
        return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in self._cuda]

    def _set_rng(self, state) -> None:
        cpu, cuda = state
        torch.set_rng_state(cpu)
        for d, s in zip(self._cuda, cuda):
            torch.cuda.set_rng_state(s, d)

    def before(self) -> None:
        """Call before each evaluation."""
        self._set_rng(self._rng)

    def after(self) -> None:
        """Call after each evaluation (parameters already restored)."""
        if self._after_first is None:
            self._after_first = self._get_rng()
            self._buffer_snapshot = [b.clone() for b in self._buffers]
        else:
            for b, s in zip(self._buffers, self._buffer_snapshot):
                b.copy_(s)

    def finish(self) -> None:
        """Leave the RNG as after one evaluation."""
        if self._after_first is not None:
            self._set_rng(self._after_first)

    def abort(self) -> None:
        """A failed step: put RNG and buffers back as they were before it."""
        self._set_rng(self._rng)
        for b, s in zip(self._buffers, self._initial):
            b.copy_(s)
