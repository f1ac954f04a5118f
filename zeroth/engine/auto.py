"""``evaluator="auto"``: the fastest evaluator that supports the objective."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

from torch import Tensor

from ..estimators.directions import Directions
from .base import EVALUATORS, Evaluator, Losses


@EVALUATORS.register("auto")
class Auto(Evaluator):
    """Delegates each call to the first evaluator of ``candidates`` that supports it.

    ``candidates`` are ordered fastest first (by the engine's cost model); the sequential
    evaluator, which supports everything, always closes the list. ``last`` records what ran.
    """

    name = "auto"

    def __init__(self, candidates: Optional[Sequence[Evaluator]] = None):
        from .sequential import Sequential

        self.candidates: List[Evaluator] = list(candidates) if candidates is not None else default_candidates()
        if not any(isinstance(c, Sequential) for c in self.candidates):
            self.candidates.append(Sequential())
        self.last: Optional[Evaluator] = None

    def choose(self, objective: Any, dirs: Optional[Directions] = None) -> Evaluator:
        for c in self.candidates:
            if c.supports(objective, dirs):
                return c
        raise RuntimeError("no evaluator supports this objective")  # unreachable: Sequential supports all

    def evaluate(self, objective: Any, params: Sequence[Tensor], dirs: Directions) -> Losses:
        self.last = self.choose(objective, dirs)
        return self.last.evaluate(objective, params, dirs)

    def __repr__(self) -> str:
        return f"Auto(candidates={self.candidates!r})"


def default_candidates() -> List[Evaluator]:
    """Evaluators tried by ``auto``, fastest first."""
    from .sequential import Sequential

    return [Sequential()]
