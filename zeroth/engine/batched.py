"""``BatchedEvaluator``: many perturbed parameter sets at once with ``torch.func`` (functional_call + vmap).

Each chunk of K evaluations builds K stacked copies of the trained parameters (the base
values plus each evaluation's perturbation) and evaluates the model on all of them in one
vectorised call. Chunks are sized from ``max_memory`` so memory stays bounded whatever the
number of evaluations. This pays off where per-call overhead dominates (small batches,
GPUs); on a compute-bound CPU the plain loop can be as fast — ``auto`` measures.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .. import protocols
from ..estimators.directions import Directions
from ..objective import scalar_loss
from .base import EVALUATORS, Evaluator, Losses, StepState, all_finite, only_batchnorm_statistics
from .rules import Support, Unsupported, batched_support
from .stages import frozen_batchnorm_buffers


@EVALUATORS.register("batched")
class BatchedEvaluator(Evaluator):
    """Evaluations in chunks of K vmapped parameter sets; ``chunk_size`` overrides the memory rule.

    Random ops in the forward (dropout, noise) run under ``vmap(randomness="same")`` from the RNG
    state every evaluation starts from, so each copy draws what the unbatched forward draws, as
    in :class:`SequentialEvaluator`. A parameter registered in several places (tied weights) is replaced
    in all of them. See :func:`zeroth.engine.rules.batched_support` for what it declines.

    Args:
        max_memory: bytes bounding a chunk's working set (K parameter sets and their activations).
        chunk_size: K itself, overriding the memory rule.

    Raises:
        ValueError: ``max_memory`` is not an int of at least 65536, or ``chunk_size`` not an int ≥ 1.
    """

    name = "batched"

    def __init__(self, max_memory: int = 256 * 2**20, chunk_size: Optional[int] = None):
        if not isinstance(max_memory, int) or max_memory < 2**16:
            raise ValueError(f"Invalid max_memory value: {max_memory!r} (bytes, at least 65536)")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"Invalid chunk_size value: {chunk_size!r}")
        self.max_memory = max_memory
        self.chunk_size = chunk_size
        self.last_activations: Optional[int] = None

    def supports(
        self, objective: Any, dirs: Optional[Directions] = None, params: Optional[Sequence[Tensor]] = None
    ) -> Support:
        """Whether this evaluator computes ``dirs`` of ``params`` on ``objective`` exactly
        (:func:`zeroth.engine.rules.batched_support`)."""
        return batched_support(objective, dirs, params)

    def evaluate(self, objective: Any, params: Sequence[Tensor], dirs: Directions) -> Losses:
        """Losses at every evaluation of ``dirs`` (see :meth:`Evaluator.evaluate`).

        Raises:
            zeroth.engine.base.Unsupported: ``supports`` is false, or the forward changes a buffer
                other than BatchNorm's statistics (everything restored first).
        """
        support = self.supports(objective, dirs, params)
        if not support:
            raise Unsupported(f"BatchedEvaluator does not apply: {support.reason}")
        points = cast(protocols.Directions, dirs)  # supports() checked that it has perturbed_stack
        model = objective.model
        places = _places(model)
        keys = [[f"{prefix}{name}" for prefix, _, name, q in places if q is p] for p in params]
        state = StepState(objective, params)
        try:
            with torch.no_grad():
                state.before()
                activations = _ActivationCounter(model)
                with activations:
                    base = scalar_loss(objective())
                state.after()
                only_batchnorm_statistics(state, "BatchedEvaluator")
                self.last_activations = activations.total
                n = len(dirs)
                param_numel = sum(p.numel() for p in params)
                per_copy = (param_numel + 3 * activations.total) * params[0].element_size()
                k = self.chunk_size or max(1, min(n, self.max_memory // max(per_copy, 1)))
                out = torch.empty(n, dtype=torch.float64, device=base.device)

                def loss_of(param_set: Dict[str, Tensor]) -> Tensor:
                    pred = torch.func.functional_call(model, param_set, (objective.inputs,), tie_weights=False)
                    if objective.targets is None:
                        return objective.loss_fn(pred).reshape(())
                    return objective.loss_fn(pred, objective.targets).reshape(())

                batched_loss = torch.func.vmap(loss_of, randomness="same")
                with frozen_batchnorm_buffers(model):
                    for lo in range(0, n, k):
                        hi = min(n, lo + k)
                        stacked = points.perturbed_stack(params, lo, hi)
                        state.before()
                        try:
                            out[lo:hi] = batched_loss(
                                {key: st for names, st in zip(keys, stacked) for key in names}
                            ).double()
                        finally:
                            _reattach(places)
                        state.after()
        except BaseException:
            state.abort()
            raise
        state.finish(failed=not all_finite(base if dirs.needs_base else None, out))
        return Losses(base if dirs.needs_base else None, out)


def _places(model: nn.Module) -> List[Tuple[str, nn.Module, str, Tensor]]:
    """``(module prefix, module, name, parameter)`` for every place a parameter is registered."""
    return [
        (f"{mname}." if mname else "", m, n, p)
        for mname, m in model.named_modules(remove_duplicate=False)
        for n, p in m._parameters.items()
        if p is not None
    ]


def _reattach(places) -> None:
    """Put the model's own Parameters back (``functional_call`` leaves plain tensors in tied places)."""
    for _, module, name, p in places:
        if module._parameters.get(name) is not p:
            module._parameters[name] = p


class _ActivationCounter:
    """Counts the elements of every module output during one forward (for chunk sizing)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.total = 0
        self._handles: List[RemovableHandle] = []

    def _hook(self, module, inputs, output):
        if isinstance(output, Tensor):
            self.total += output.numel()

    def __enter__(self):
        self._handles = [m.register_forward_hook(self._hook) for m in self.model.modules() if not list(m.children())]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        return False
