"""``evaluator="auto"``: the fastest evaluator that supports the objective, chosen by measurement."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from ..estimators.directions import Directions
from .base import EVALUATORS, Evaluator, Losses


@EVALUATORS.register("auto")
class Auto(Evaluator):
    """Delegates each step to the fastest evaluator that supports it.

    ``preferred`` evaluators are used whenever they apply (FeatureReuse does strictly less
    arithmetic than the others for CGE). Among the remaining ``candidates`` (Batched,
    Sequential) the choice depends on the machine — vmap wins on GPUs and small batches, the
    plain loop on a compute-bound CPU — so the first step of each new (model, batch shape,
    direction kind) times every supporting candidate on the real work and remembers the
    fastest. Every candidate returns the same losses (up to float rounding), so the measured
    step is a normal step. The choices are part of the optimizer's ``state_dict``, so a resumed
    run is bit-identical; on another machine the choice (and so the rounding) may differ —
    force an evaluator for bitwise reproducibility across machines.
    ``last`` is the evaluator that produced the latest result; ``timings`` what was measured.
    """

    name = "auto"

    def __init__(self, preferred: Optional[Sequence[Evaluator]] = None, candidates: Optional[Sequence[Evaluator]] = None):
        from .batched import Batched
        from .feature_reuse import FeatureReuse
        from .sequential import Sequential

        self.preferred: List[Evaluator] = list(preferred) if preferred is not None else [FeatureReuse()]
        self.candidates: List[Evaluator] = list(candidates) if candidates is not None else [Batched(), Sequential()]
        if not any(isinstance(c, Sequential) for c in self.candidates):
            self.candidates.append(Sequential())
        self.last: Optional[Evaluator] = None
        self.timings: Dict[str, Dict[str, float]] = {}
        self._choice: Dict[str, Evaluator] = {}

    @staticmethod
    def _key(objective: Any, dirs: Directions) -> str:
        """What the choice depends on: model class, batch shape/dtype/device, kind and count of evaluations."""
        model = getattr(objective, "model", None)
        inputs = getattr(objective, "inputs", None)
        batch = (tuple(inputs.shape), str(inputs.dtype), str(inputs.device)) if isinstance(inputs, Tensor) else None
        return repr((type(model).__name__ if model is not None else "closure", batch, type(dirs).__name__, len(dirs)))

    def state_dict(self) -> Dict[str, Any]:
        """The choices made so far (saved by the optimizer, so a resumed run makes the same ones)."""
        return {"choice": {k: repr(v) for k, v in self._choice.items()}, "timings": dict(self.timings)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        by_repr = {repr(c): c for c in self.candidates}
        self._choice = {k: by_repr[r] for k, r in state.get("choice", {}).items() if r in by_repr}
        self.timings = dict(state.get("timings", {}))

    def evaluate(self, objective: Any, params: Sequence[Tensor], dirs: Directions) -> Losses:
        for ev in self.preferred:
            if ev.supports(objective, dirs, params):
                self.last = ev
                return ev.evaluate(objective, params, dirs)
        usable = [c for c in self.candidates if c.supports(objective, dirs, params)]
        key = self._key(objective, dirs)
        if len(usable) == 1 or key in self._choice:
            self.last = self._choice.get(key, usable[0])
            return self.last.evaluate(objective, params, dirs)
        times: Dict[str, float] = {}
        result = None
        snapshot = _Snapshot(objective)
        for i, ev in enumerate(usable):
            if i:  # each candidate starts from the same state: BN buffers move once per step
                snapshot.restore()
            start = time.perf_counter()
            result = ev.evaluate(objective, params, dirs)
            times[repr(ev)] = time.perf_counter() - start
        self.timings[key] = times
        self._choice[key] = min(usable, key=lambda e: times[repr(e)])
        self.last = usable[-1]
        return result

    def __repr__(self) -> str:
        return f"Auto(preferred={self.preferred!r}, candidates={self.candidates!r})"


class _Snapshot:
    """The objective's model buffers and the global RNG state, to rerun a step from the same start."""

    def __init__(self, objective: Any):
        model = getattr(objective, "model", None)
        self.buffers = list(model.buffers()) if model is not None else []
        self.values = [b.detach().clone() for b in self.buffers]
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        with torch.no_grad():
            for b, v in zip(self.buffers, self.values):
                b.copy_(v)
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
