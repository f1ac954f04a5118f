"""The objective: a callable returning the loss, that also exposes its structure.

``Objective(model, loss_fn, inputs, targets)()`` returns ``loss_fn(model(inputs), targets)``,
so it works wherever a closure does; fast evaluators read ``model``/``inputs``/``targets``
to reuse features across perturbations. A plain closure is accepted by every optimizer
entry point too and is evaluated by the always-correct sequential evaluator.

Real batches (Hugging Face and the like) are objectives too: a mapping of inputs is passed
as keyword arguments (``model(**batch)``), and without ``loss_fn`` the loss is read from the
model's output (``output.loss``, ``output["loss"]`` or a scalar tensor output)::

    Objective(model, inputs=batch)                            # model(**batch).loss
    Objective(model, lambda out, b: ..., batch, targets=batch)  # loss_fn(output, batch)

Only the *standard form* — a tensor input and a ``loss_fn`` — can be taken apart by the fast
evaluators (:attr:`Objective.standard_form`); every other objective runs on the sequential one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, List, Optional

import torch
from torch import Tensor, nn


def output_loss(output: Any) -> Tensor:
    """The loss a model returned: ``output.loss``, ``output["loss"]``, or the output itself if a scalar tensor.

    Args:
        output: what the model returned (a Hugging Face ``ModelOutput``, a mapping, a tensor).

    Returns:
        The loss tensor as found (not detached, not reshaped).

    Raises:
        ValueError: none of these holds (e.g. a Hugging Face model called without ``labels``);
            the message names what the output was.
    """
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if loss is None and isinstance(output, Tensor) and output.numel() == 1:
        loss = output
    if loss is None:
        what = f"a tensor of shape {tuple(output.shape)}" if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(
            f"loss_fn=None reads the loss from the model output (output.loss), but the model returned "
            f"{what} without a loss (Hugging Face models need 'labels' in the batch); pass a loss_fn"
        )
    return loss


class Objective:
    """``loss_fn(model(inputs), targets)`` (or ``loss_fn(model(inputs))`` when targets is None).

    Args:
        model: the ``nn.Module`` whose parameters are trained.
        loss_fn: ``loss_fn(output, targets)`` / ``loss_fn(output)`` → scalar tensor; ``None``
            reads the loss from the output (:func:`output_loss`: ``output.loss``).
        inputs: a tensor (``model(inputs)``), a mapping (``model(**inputs)``, e.g. a Hugging
            Face batch with ``input_ids``/``attention_mask``/``labels``) or any other object,
            passed as the single argument (tuples and nested structures included).
        targets: second argument of ``loss_fn`` (anything, e.g. the batch itself); needs a ``loss_fn``.

    Calling the objective, ``objective()``, returns the loss: a scalar tensor (as ``loss_fn``
    returns it; evaluators convert it with :func:`scalar_loss`). It does not itself disable
    gradient tracking; the optimizers call it under ``torch.no_grad()``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``loss_fn`` is not callable, or ``inputs`` is None.
        ValueError: ``targets`` is given without a ``loss_fn``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Optional[Callable[..., Tensor]] = None,
        inputs: Any = None,
        targets: Optional[Any] = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable or None, got {type(loss_fn).__name__}")
        if loss_fn is None and targets is not None:
            raise ValueError(
                "targets: given without a loss_fn (with loss_fn=None the loss is read from the model output)"
            )
        if inputs is None:
            raise TypeError(
                "inputs: the model input is missing (a tensor, a mapping for model(**inputs), or an object)"
            )
        self.model = model
        self.loss_fn: Callable[..., Tensor] = loss_fn if loss_fn is not None else output_loss
        self.inputs = inputs
        self.targets = targets
        self._reads_output_loss = loss_fn is None

    @property
    def standard_form(self) -> bool:
        """True when the objective is ``loss_fn(model(x), targets)`` with a tensor ``x`` and a user ``loss_fn``.

        Only then may an evaluator call the model on ``inputs`` itself (stages, vmap) and
        apply ``loss_fn`` to what it computed; every other objective must be called as is.
        """
        return isinstance(self.inputs, Tensor) and not self._reads_output_loss

    def forward(self) -> Any:
        """The model output on ``inputs`` (``model(**inputs)`` for a mapping, else ``model(inputs)``)."""
        if isinstance(self.inputs, Mapping):
            return self.model(**self.inputs)
        return self.model(self.inputs)

    def loss_of(self, output: Any) -> Tensor:
        """The loss of a model output: ``loss_fn(output, targets)`` / ``loss_fn(output)`` / ``output.loss``."""
        return self.loss_fn(output) if self.targets is None else self.loss_fn(output, self.targets)

    def __call__(self) -> Tensor:
        return self.loss_of(self.forward())

    def state_tensors(self) -> List[Tensor]:
        """Tensors a forward may change besides parameters (BatchNorm running statistics)."""
        return list(self.model.buffers())

    def parameter_names(self) -> dict:
        """Map ``id(param) -> qualified name`` for the model's parameters."""
        return {id(p): n for n, p in self.model.named_parameters()}

    def __repr__(self) -> str:
        shape: object  # what the repr shows of the inputs
        if isinstance(self.inputs, Tensor):
            shape = tuple(self.inputs.shape)
        elif isinstance(self.inputs, Mapping):
            shape = (
                "{"
                + ", ".join(
                    f"{k}: {tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}"
                    for k, v in self.inputs.items()
                )
                + "}"
            )
        else:
            shape = type(self.inputs).__name__
        return (
            f"Objective({type(self.model).__name__}, {getattr(self.loss_fn, '__name__', self.loss_fn)}, inputs={shape})"
        )


def scalar_loss(value: Any, who: str = "objective", what: str = "a scalar loss") -> Tensor:
    """The loss returned by an objective as a detached 0-d tensor.

    Args:
        value: a 1-element tensor (floating, int32 or int64), a Python ``float``/``int``, or a
            numpy scalar / 1-element array.
        who, what: how error messages name the callable and what it must return
            (``"{who} must return {what}, ..."``; :func:`~zeroth.zo_gradient` says ``fun``).

    Returns:
        A 0-d tensor: a tensor keeps its dtype and device (detached); Python and numpy numbers
        become float64 on the CPU.

    Raises:
        ValueError: a tensor with more than one element.
        TypeError: a tensor of another dtype (complex, bool, ...), or any other type (``bool`` included).
    """
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{who} must return {what}, got a tensor of shape {tuple(value.shape)}")
        if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{who} must return a real number, got dtype {value.dtype}")
        return value.detach().reshape(())
    if isinstance(value, (float, int)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float64)
    try:  # numpy scalars and 1-element arrays
        import numpy as np

        if isinstance(value, (np.ndarray, np.generic)) and np.size(value) == 1:
            return torch.tensor(float(np.asarray(value).reshape(())), dtype=torch.float64)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    raise TypeError(f"{who} must return {what} (tensor or float), got {type(value).__name__}")
