"""The objective: a callable returning the loss, that also exposes its structure.

``Objective(model, loss_fn, inputs, targets)()`` returns ``loss_fn(model(inputs), targets)``,
so it works wherever a closure does; fast evaluators read ``model``/``inputs``/``targets``
to reuse features across perturbations. A plain closure is accepted by every optimizer
entry point too and is evaluated by the always-correct sequential evaluator.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional

import torch
from torch import Tensor, nn


class Objective:
    """``loss_fn(model(inputs), targets)`` (or ``loss_fn(model(inputs))`` when targets is None)."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[..., Tensor],
        inputs: Any,
        targets: Optional[Any] = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self.model = model
        self.loss_fn = loss_fn
        self.inputs = inputs
        self.targets = targets

    def __call__(self) -> Tensor:
        out = self.model(self.inputs)
        return self.loss_fn(out) if self.targets is None else self.loss_fn(out, self.targets)

    def state_tensors(self) -> List[Tensor]:
        """Tensors a forward may change besides parameters (BatchNorm running statistics)."""
        return list(self.model.buffers())

    def parameter_names(self) -> dict:
        """Map ``id(param) -> qualified name`` for the model's parameters."""
        return {id(p): n for n, p in self.model.named_parameters()}

    def __repr__(self) -> str:
        shape = tuple(self.inputs.shape) if isinstance(self.inputs, Tensor) else type(self.inputs).__name__
        return f"Objective({type(self.model).__name__}, {getattr(self.loss_fn, '__name__', self.loss_fn)}, inputs={shape})"


def scalar_loss(value: Any) -> Tensor:
    """The loss returned by an objective as a detached 0-d tensor; a clear error otherwise."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"objective must return a scalar loss, got a tensor of shape {tuple(value.shape)}")
        if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"objective must return a real number, got dtype {value.dtype}")
        return value.detach().reshape(())
    if isinstance(value, (float, int)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float64)
    try:  # numpy scalars and 1-element arrays
        import numpy as np

        if isinstance(value, (np.ndarray, np.generic)) and np.size(value) == 1:
            return torch.tensor(float(np.asarray(value).reshape(())), dtype=torch.float64)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    raise TypeError(f"objective must return a scalar loss (tensor or float), got {type(value).__name__}")
