"""``Batched``: many perturbed parameter sets at once with ``torch.func`` (functional_call + vmap).

Each chunk of K evaluations builds K stacked copies of the trained parameters (the base
values plus each evaluation's perturbation) and evaluates the model on all of them in one
vectorised call. Chunks are sized from ``max_memory`` so memory stays bounded whatever the
number of evaluations. This pays off where per-call overhead dominates (small batches,
GPUs); on a compute-bound CPU the plain loop can be as fast — ``auto`` measures.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..estimators.directions import Coordinates, Directions, RandomDirections
from ..objective import Objective, scalar_loss
from .base import EVALUATORS, Evaluator, Losses, StepState
from .stages import frozen_batchnorm_buffers, owns


def _active_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0 for m in model.modules())


@EVALUATORS.register("batched")
class Batched(Evaluator):
    """Evaluations in chunks of K vmapped parameter sets; ``chunk_size`` overrides the memory rule."""

    name = "batched"

    def __init__(self, max_memory: int = 256 * 2**20, chunk_size: Optional[int] = None):
        if not isinstance(max_memory, int) or max_memory < 2**16:
            raise ValueError(f"Invalid max_memory value: {max_memory!r} (bytes, at least 65536)")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"Invalid chunk_size value: {chunk_size!r}")
        self.max_memory = max_memory
        self.chunk_size = chunk_size

    def supports(self, objective: Any, dirs: Optional[Directions] = None, params: Optional[Sequence[Tensor]] = None) -> bool:
        if not isinstance(objective, Objective) or not isinstance(objective.inputs, Tensor):
            return False
        if _active_dropout(objective.model):  # copies must share the base pass's dropout mask
            return False
        if dirs is not None and not isinstance(dirs, (Coordinates, RandomDirections)):
            return False
        return params is None or owns([objective.model], params)

    def evaluate(self, objective: Any, params: Sequence[Tensor], dirs: Directions) -> Losses:
        if not self.supports(objective, dirs, params):
            raise ValueError("Batched needs an Objective whose model owns the parameters, without active dropout")
        model = objective.model
        names = {id(p): n for n, p in model.named_parameters()}
        keys = [names[id(p)] for p in params]
        state = StepState(objective, params)
        with torch.no_grad():
            state.before()
            activations = _ActivationCounter(model)
            with activations:
                base = scalar_loss(objective())
            state.after()
            n = len(dirs)
            param_numel = sum(p.numel() for p in params)
            per_copy = (param_numel + 3 * activations.total) * params[0].element_size()
            k = self.chunk_size or max(1, min(n, self.max_memory // max(per_copy, 1)))
            out = torch.empty(n, dtype=torch.float64, device=base.device)

            def loss_of(param_set: Dict[str, Tensor]) -> Tensor:
                pred = torch.func.functional_call(model, param_set, (objective.inputs,))
                if objective.targets is None:
                    return objective.loss_fn(pred).reshape(())
                return objective.loss_fn(pred, objective.targets).reshape(())

            batched_loss = torch.func.vmap(loss_of)
            with frozen_batchnorm_buffers(model):
                for lo in range(0, n, k):
                    hi = min(n, lo + k)
                    stacked = perturbed_sets(params, dirs, lo, hi)
                    out[lo:hi] = batched_loss(dict(zip(keys, stacked))).double()
        state.finish()
        return Losses(base if dirs.needs_base else None, out)


def perturbed_sets(params: Sequence[Tensor], dirs: Directions, lo: int, hi: int) -> List[Tensor]:
    """For evaluations ``lo..hi-1``: per parameter a ``(hi-lo, *shape)`` stack of perturbed values."""
    k = hi - lo
    stacks = [p.detach().unsqueeze(0).repeat((k,) + (1,) * p.dim()) for p in params]
    if isinstance(dirs, Coordinates):
        n = dirs.num_directions
        for sb in range(dirs.num_signs):
            sign = 1.0 if sb == 0 else -1.0
            for j, idx in enumerate(dirs.indices):
                first, last = sb * n + dirs.offsets[j], sb * n + dirs.offsets[j + 1]
                a, b = max(first, lo), min(last, hi)
                if a >= b:
                    continue
                rows = torch.arange(a - lo, b - lo, device=stacks[j].device)
                cols = idx[a - first:b - first].to(stacks[j].device)
                flat = stacks[j].view(k, -1)
                flat[rows, cols] += sign * dirs.mus[j]
        return stacks
    for e in range(lo, hi):  # random directions, regenerated from the seed
        i, sign = e % dirs.num_directions, dirs.sign(e)
        for j, st in enumerate(stacks):
            st[e - lo].add_(dirs.direction(i, j), alpha=sign * dirs.mus[j])
    return stacks


class _ActivationCounter:
    """Counts the elements of every module output during one forward (for chunk sizing)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.total = 0
        self._handles = []

    def _hook(self, module, inputs, output):
        if isinstance(output, Tensor):
            self.total += output.numel()

    def __enter__(self):
        self._handles = [m.register_forward_hook(self._hook) for m in self.model.modules()
                         if not list(m.children())]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        return False
