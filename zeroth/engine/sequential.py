"""The sequential evaluator: perturb in place, evaluate, restore — the reference for all others."""

from __future__ import annotations

from typing import Any, Sequence, cast

import torch
from torch import Tensor

from .. import protocols
from ..estimators.directions import Directions
from ..objective import scalar_loss
from .base import EVALUATORS, UNPERTURBED, Evaluator, Losses, StepState, all_finite, call_noted, perturbed_point


@EVALUATORS.register("sequential")
class SequentialEvaluator(Evaluator):
    """One evaluation at a time on the live parameters; works for any closure.

    ``restore="exact"`` (default) puts parameters back bitwise (it keeps the few touched
    values for coordinates, a copy of the parameters for dense random directions);
    ``restore="inverse"`` subtracts the perturbation again (MeZO: no copy, so a step needs
    the memory of inference only, at the price of rounding of order one ulp per step).

    Args:
        restore: ``"exact"`` or ``"inverse"`` (above).

    Raises:
        ValueError: ``restore`` is neither.
    """

    name = "sequential"

    def __init__(self, restore: str = "exact"):
        if restore not in ("exact", "inverse"):
            raise ValueError(f"Invalid restore value: {restore!r} (expected 'exact' or 'inverse')")
        self.restore = restore

    def evaluate(self, objective: Any, params: Sequence[Tensor], dirs: Directions) -> Losses:
        """Perturb, evaluate, restore, for every evaluation of ``dirs`` in turn (see :meth:`Evaluator.evaluate`).

        Raises:
            TypeError: ``objective`` is not callable.
            Exception: whatever the objective raises, with a note naming the evaluation;
                parameters and buffers are restored first.
        """
        if not callable(objective):
            raise TypeError(f"objective must be callable, got {type(objective).__name__}")
        # a direction set given to an evaluator meets the evaluator contract (zeroth.protocols.Directions:
        # perturb/restore here); the base class in the signature declares only the layout
        points = cast(protocols.Directions, dirs)
        state = StepState(objective, params)
        exact = self.restore == "exact"
        n = len(dirs)
        out = None
        try:
            with torch.no_grad():
                base = None
                if dirs.needs_base:
                    state.before()
                    base = scalar_loss(call_noted(objective, UNPERTURBED))
                    state.after()
                for e in range(n):
                    state.before()
                    token = points.perturb(params, e, exact=exact)
                    try:
                        value = scalar_loss(call_noted(objective, perturbed_point(e, n)))
                    finally:
                        points.restore(params, e, token)
                        token = None  # drop this evaluation's copy before the next one makes its own
                    state.after()
                    if out is None:
                        out = torch.empty(n, dtype=torch.float64, device=value.device)
                    out[e] = value
                if not dirs.needs_base:
                    state.settle_at_theta(objective)
        except BaseException:
            state.abort()
            raise
        if out is None:
            out = torch.empty(0, dtype=torch.float64)
        state.finish(failed=not all_finite(base, out))
        return Losses(base, out)

    def __repr__(self) -> str:
        return f"SequentialEvaluator(restore={self.restore!r})"
