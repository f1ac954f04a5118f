"""DeepZero's CGE worker (block-level feature reuse), written from the paper's description.

DeepZero (Chen et al., ICLR 2024, arXiv:2310.02025; code OPTML-Group/DeepZero, not used here)
estimates one coordinate per forward pass and reuses features at residual-block granularity:

1. once per step, the unperturbed forward caches the input of every block;
2. per coordinate: perturb the parameter in place, run the forward from the cached input of the
   block that owns it to the loss, restore the parameter.

Blocks are the model's stages as DeepZero groups them: each residual block (``zo_residual``) is
one block, and runs of other stages between them are one block each (ResNet-20: the stem
conv/BN/ReLU, the nine basic blocks, pooling + classifier). BatchNorm runs in train mode in the
perturbed forwards with batch statistics and leaves the running statistics as the cache pass left
them (what :class:`~zeroth.engine.SequentialEvaluator` does), so the losses equal SequentialEvaluator's.

This is a baseline for ``bench/resnet.py``, not part of the package.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from zeroth.engine.base import Losses
from zeroth.engine.delta import is_residual
from zeroth.engine.stages import frozen_batchnorm_buffers, stages
from zeroth.objective import scalar_loss


def blocks_of(model: nn.Module) -> List[nn.Module]:
    """DeepZero's blocks: each residual stage alone, consecutive other stages together."""
    chain = stages(model)
    if chain is None:
        raise ValueError(f"{type(model).__name__} is not a chain of stages (nn.Sequential or zo_stages())")
    out: List[nn.Module] = []
    run: List[nn.Module] = []
    for m in chain:
        if is_residual(m):
            if run:
                out.append(nn.Sequential(*run))
                run = []
            out.append(m)
        else:
            run.append(m)
    if run:
        out.append(nn.Sequential(*run))
    return out


class BlockRestart:
    """Per coordinate: perturb, forward from the cached input of the perturbed block, restore.

    ``cache(objective)`` makes the step's cache (block inputs and the base loss);
    ``coordinate_losses(cache, p, indices, values)`` the perturbed losses of coordinates of one
    parameter; ``evaluate`` both, with :class:`~zeroth.engine.SequentialEvaluator`'s contract (CGE
    coordinates only, forward or central).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.blocks = blocks_of(model)
        self.owner: Dict[int, int] = {}
        for b, block in enumerate(self.blocks):
            for p in block.parameters():
                self.owner.setdefault(id(p), b)

    def cache(self, objective) -> Tuple[List[Tensor], Tensor]:
        """The inputs of every block and the unperturbed loss (one forward; running statistics move once)."""
        with torch.no_grad():
            inputs = [objective.inputs]
            for block in self.blocks:
                inputs.append(block(inputs[-1]))
            base = scalar_loss(objective.loss_fn(inputs[-1], objective.targets))
        return inputs, base

    def coordinate_losses(self, objective, cache, p: Tensor, indices: Tensor, values: Tensor) -> Tensor:
        """Losses (float64) with ``p.flatten()[indices[k]]`` set to ``values[k]``, one forward each."""
        inputs, _ = cache
        b = self.owner[id(p)]
        flat = p.detach().view(-1)  # parameters are contiguous here (ResNet-20)
        out = torch.empty(indices.numel(), dtype=torch.float64, device=inputs[0].device)
        with torch.no_grad(), frozen_batchnorm_buffers(self.model):
            for k, (i, v) in enumerate(zip(indices.tolist(), values)):
                old = flat[i].clone()
                flat[i] = v
                try:
                    h = inputs[b]
                    for block in self.blocks[b:]:
                        h = block(h)
                    out[k] = scalar_loss(objective.loss_fn(h, objective.targets))
                finally:
                    flat[i] = old
        return out

    def evaluate(self, objective, params: Sequence[Tensor], dirs) -> Losses:
        """Losses at every evaluation of CGE coordinates ``dirs`` (SequentialEvaluator's order)."""
        cache = self.cache(objective)
        parts = []
        for sign in range(dirs.num_signs):
            for j, p in enumerate(params):
                parts.append(self.coordinate_losses(objective, cache, p, dirs.indices[j], dirs.values[sign][j]))
        return Losses(cache[1], torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64))
