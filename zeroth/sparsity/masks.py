r"""Mask rules: which coordinates a ZO step estimates ("sparse gradient, dense model").

A mask rule is what ``ZOOptimizer(..., sparsity=rule)`` calls once per step::

    masks = rule.select(params, step, generator)   # per parameter: LongTensor of flat indices, or None (all)

and checkpoints through ``rule.state_dict()`` / ``rule.load_state_dict()`` (the optimizer
stores it inside its own ``state_dict``, so a resumed run is bit-identical). CGE then
queries only the selected coordinates, so a step costs ``1 + #selected`` evaluations.

Rules:

* :class:`DynamicMask` — per layer, ``round(ratio · n)`` coordinates, re-chosen every
  ``resample_every`` steps: ``rule="random"`` draws them uniformly without replacement
  from the optimizer's generator (DeepZero), ``rule="magnitude"`` takes the entries of
  largest ``|θ|``. ``resample_every=None`` chooses once and keeps that mask (a fixed mask).
* :class:`FixedMask` — user-supplied masks (boolean or index tensors).

A tensor that a rule has no ratio or mask for is selected in full (all its coordinates are
estimated). ``DynamicMask(number)`` gives its number to every Linear/Conv weight (without
``model``: to every tensor with ``dim() >= 2``), so biases and normalisation parameters are
selected in full; with a ``{name: ratio}`` mapping (or a :class:`FixedMask`), every tensor not
named is selected in full, and a bias or normalisation tensor that *is* named gets its ratio
(or mask) like any weight.

**Unselected coordinates and the base rule.** The model stays dense. An unselected
coordinate gets ``p.grad = 0`` in that step, and the base rule is then applied unchanged
to the whole tensor, exactly as torch would apply it to that gradient. So with plain SGD
it does not move; with momentum it keeps moving along its momentum buffer (the decayed
memory of earlier steps in which it was selected); weight decay shrinks it; Adam keeps
moving it by its first moment. This is the behaviour of DeepZero's training, where the
single master copy takes the full SGD(momentum, weight decay) step (their ``FO with the
same sparse gradients`` baseline too). In zeroth every evaluator perturbs the one live
copy of the parameters, so there are no worker copies that could drift from it. To freeze
unselected coordinates completely, use a base rule without momentum and weight decay.

References:
    A. Chen et al., "DeepZero: scaling up zeroth-order optimization for deep model training",
    ICLR 2024, arXiv:2310.02025 ("sparse gradient, dense model": random coordinates at the
    ZO-GraSP layer ratios, re-drawn every few epochs).
"""

from __future__ import annotations

import numbers
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .ratios import check_ratios, prunable_weights

Masks = List[Optional[Tensor]]


class MaskRule:
    """Base class of mask rules: ``select``, ``state_dict``, ``load_state_dict``.

    The structural contract is :class:`zeroth.protocols.MaskRule`; a subclass implements
    :meth:`select` and, when it has a schedule, the state methods.
    """

    def select(self, params: Sequence[Tensor], step: int, generator: Optional[torch.Generator] = None) -> Masks:
        """The coordinates optimizer step ``step`` estimates.

        Args:
            params: the trainable parameter tensors, in the optimizer's order.
            step: the optimizer's step count (0 for the first step).
            generator: the optimizer's generator, the only source of randomness allowed.

        Returns:
            Per parameter, a 1-D int64 tensor of sorted flat (row-major) indices on the
            parameter's device, or None for all of its coordinates.

        Raises:
            NotImplementedError: in the base class.
        """
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        """The rule's schedule state for checkpoints (``{}`` for a rule without one)."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the base class only checks it is a dict).

        Raises:
            TypeError: ``state`` is not a dict.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")


def count_selected(masks: Optional[Sequence[Optional[Tensor]]], params: Sequence[Tensor]) -> int:
    """Number of coordinates ``masks`` selects in ``params`` (all of them when ``masks`` is None).

    Args:
        masks: as returned by a mask rule's ``select`` (None entries count the whole tensor).
        params: the parameter tensors, in the same order.

    Returns:
        The count ``d`` (CGE then costs ``d + 1`` evaluations).
    """
    if masks is None:
        return sum(p.numel() for p in params)
    return sum(p.numel() if m is None else int(m.numel()) for p, m in zip(params, masks))


def _names_of(model: Optional[nn.Module]) -> Dict[int, str]:
    return {} if model is None else {id(p): n for n, p in model.named_parameters()}


class DynamicMask(MaskRule):
    """Per-layer masks at given kept fractions, re-chosen every ``resample_every`` steps.

    Args:
        ratios: kept fraction per Linear/Conv weight — a ``{name: ratio}`` mapping (e.g. from
            :func:`~zeroth.sparsity.grasp_ratios`; needs ``model`` to resolve the names), or
            one number for every weight (with ``model``: its Linear/Conv weights; without:
            every parameter with ``dim() >= 2``). See :mod:`zeroth.sparsity.ratios`.
        resample_every: steps between re-draws (DeepZero: 5 epochs' worth of steps);
            ``None`` keeps the first mask for the whole run.
        model: the module whose parameters the optimizer trains.
        rule: ``"random"`` (uniform, from the generator passed to ``select``) or
            ``"magnitude"`` (largest ``|θ|`` at the time of the re-draw; no randomness).

    The masks in use are ``current``; ``state_dict`` holds them and the schedule position.
    Layer ``l`` gets ``round(ratio_l · n_l)`` coordinates (sorted, unique); a tensor without a
    ratio (biases, normalisation, a weight not named) is selected in full.

    Raises:
        ValueError: a ratio outside [0, 1], a mapping of ratios without ``model``, names not in
            ``model``, ``resample_every`` not an integer ≥ 1 (or None), or an unknown ``rule``.
        TypeError: ``model`` is not an ``nn.Module``, or ``ratios`` is neither a number nor a
            mapping of names to numbers.

    References:
        A. Chen et al., "DeepZero", ICLR 2024, arXiv:2310.02025 (random masks at the ZO-GraSP
        ratios, re-drawn every 5 epochs).
    """

    _rules = ("random", "magnitude")

    def __init__(
        self,
        ratios: Union[float, Mapping[str, float]],
        resample_every: Optional[int] = 1,
        *,
        model: Optional[nn.Module] = None,
        rule: str = "random",
    ):
        if isinstance(ratios, numbers.Real) and not isinstance(ratios, bool):
            if not (ratios <= 1.0 and not ratios < 0.0):  # 0 <= ratios <= 1 with Real's <=, < (NaN fails)
                raise ValueError(f"Invalid ratios value: {ratios!r} (a kept fraction, expected 0 <= ratios <= 1)")
            self.ratio: Optional[float] = float(ratios)
            self.ratios: Dict[str, float] = {}
        else:
            if not isinstance(ratios, Mapping):
                raise TypeError(
                    "ratios must be one kept fraction (a number in [0, 1], for every weight) or a mapping "
                    f"from parameter name to kept fraction, got {type(ratios).__name__}"
                )
            self.ratio = None
            self.ratios = check_ratios(ratios)
            if model is None:
                raise ValueError("model: needed to resolve the parameter names in ratios")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if resample_every is not None and (
            isinstance(resample_every, bool) or not isinstance(resample_every, numbers.Integral) or resample_every < 1
        ):
            raise ValueError(f"Invalid resample_every value: {resample_every!r} (expected an integer >= 1 or None)")
        if rule not in self._rules:
            raise ValueError(f"Invalid rule value: {rule!r} (expected one of {', '.join(map(repr, self._rules))})")
        if model is not None:
            names = dict(model.named_parameters())
            missing = sorted(set(self.ratios) - set(names))
            if missing:
                raise ValueError(f"ratios: names not found in the model: {', '.join(missing)}")
            if self.ratio is not None:
                self.ratios = {n: self.ratio for n in prunable_weights(model)}
        self.model = model
        self.resample_every = None if resample_every is None else int(resample_every)
        self.rule = rule
        self.current: Optional[Masks] = None
        self._block: Optional[int] = None
        self._numels: Optional[List[int]] = None

    def layer_ratios(self, params: Sequence[Tensor]) -> List[Optional[float]]:
        """Kept fraction of each parameter (None: always fully selected).

        Args:
            params: the trainable parameter tensors, in the optimizer's order.

        Returns:
            One ratio (or None) per tensor.

        Raises:
            ValueError: a named ratio is for a tensor that is not among ``params``.
        """
        if self.model is None:
            return [self.ratio if p.dim() >= 2 else None for p in params]
        names = _names_of(self.model)
        out = [self.ratios.get(names.get(id(p), ""), None) for p in params]
        unseen = set(self.ratios) - {names.get(id(p)) for p in params}
        if unseen and self.ratio is None:  # a named ratio for a tensor the optimizer does not train
            raise ValueError(
                f"ratios: names not among the optimizer's trainable parameters: {', '.join(sorted(unseen))}"
            )
        return out

    def _draw(self, params: Sequence[Tensor], generator: Optional[torch.Generator]) -> Masks:
        masks: Masks = []
        for p, r in zip(params, self.layer_ratios(params)):
            if r is None:
                masks.append(None)
                continue
            n = p.numel()
            k = min(n, max(0, int(round(r * n))))
            if self.rule == "random":
                idx = torch.randperm(n, generator=generator)[:k]
            else:
                idx = torch.sort(p.detach().reshape(-1).abs().cpu(), descending=True, stable=True).indices[:k]
            masks.append(idx.sort().values.to(p.device))
        return masks

    def select(self, params: Sequence[Tensor], step: int, generator: Optional[torch.Generator] = None) -> Masks:
        """The masks for optimizer step ``step`` (re-drawn when a new block of steps begins).

        Block ``step // resample_every`` (always 0 with ``resample_every=None``) keeps one
        mask; ``"random"`` draws ``torch.randperm`` from ``generator`` (on the CPU), so a
        seeded optimizer re-draws the same masks. Arguments and return value as in
        :meth:`MaskRule.select`.

        Raises:
            ValueError: ``step`` is not an integer ≥ 0, or the masks in use were drawn for
                parameters of other sizes.
        """
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"Invalid step value: {step!r} (expected an integer >= 0)")
        numels = [p.numel() for p in params]
        block = 0 if self.resample_every is None else int(step) // self.resample_every
        if self.current is not None and self._numels != numels:
            raise ValueError(
                "params: the masks in use were drawn for other parameters "
                f"(sizes {self._numels}, now {numels}); build a new DynamicMask"
            )
        if self.current is None or block != self._block:
            self.current = self._draw(params, generator)
            self._block = block
            self._numels = numels
        return list(self.current)

    def state_dict(self) -> Dict[str, Any]:
        """Current masks (index tensors on the CPU) and the schedule position.

        Returns:
            ``{"block": int or None, "numels": list or None, "masks": list or None}``.
        """
        return {
            "block": self._block,
            "numels": None if self._numels is None else list(self._numels),
            "masks": None if self.current is None else [None if m is None else m.cpu() for m in self.current],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore masks and schedule position from :meth:`state_dict` (masks go back to the devices in use).

        Raises:
            TypeError: ``state`` is not a dict.
            ValueError: ``state`` does not have exactly the keys of a DynamicMask state.
        """
        super().load_state_dict(state)
        if set(state) != {"block", "numels", "masks"}:
            raise ValueError(f"state: not a DynamicMask state (keys {sorted(state)})")
        self._block = state["block"]
        self._numels = None if state["numels"] is None else list(state["numels"])
        masks = state["masks"]
        if masks is None:
            self.current = None
            return
        devices: List[Optional[torch.device]] = [None] * len(masks)
        if self.current is not None and len(self.current) == len(masks):
            devices = [None if m is None else m.device for m in self.current]
        self.current = [None if m is None else (m.to(d) if d is not None else m) for m, d in zip(masks, devices)]

    def __repr__(self) -> str:
        what = self.ratio if self.ratio is not None and self.model is None else f"{len(self.ratios)} layers"
        return f"DynamicMask(ratios={what}, resample_every={self.resample_every}, rule={self.rule!r})"


class FixedMask(MaskRule):
    """User-supplied masks, the same at every step.

    ``masks``: a ``{parameter name: mask}`` mapping (needs ``model``) or a sequence with one
    entry per trainable parameter, in the optimizer's order. Each mask is a boolean tensor
    shaped like its parameter, a 1-D tensor of flat indices, or None (all coordinates).
    Parameters without an entry are fully selected.

    Args:
        masks: the masks, by parameter name or by position.
        model: the module, to resolve names (required with a mapping).

    Raises:
        ValueError: a mapping without ``model``, names not in ``model``, a boolean mask of
            another shape than its parameter, or a negative or out-of-range index.
        TypeError: ``masks`` is neither a mapping nor a list/tuple, or a mask is not a
            bool/integer tensor.
    """

    def __init__(self, masks: Union[Mapping[str, Any], Sequence[Any]], *, model: Optional[nn.Module] = None):
        if isinstance(masks, Mapping):
            if model is None:
                raise ValueError("model: needed to resolve the parameter names in masks")
            params = dict(model.named_parameters())
            missing = sorted(set(masks) - set(params))
            if missing:
                raise ValueError(f"masks: names not found in the model: {', '.join(missing)}")
            self._by_name = {n: _as_indices(m, params[n], f"masks[{n!r}]") for n, m in masks.items()}
            self._by_position: Optional[Masks] = None
        elif isinstance(masks, (list, tuple)):
            self._by_name = {}
            self._by_position = [
                None if m is None else _as_indices(m, None, f"masks[{i}]") for i, m in enumerate(masks)
            ]
        else:
            raise TypeError(f"masks must be a mapping from parameter name or a list, got {type(masks).__name__}")
        self.model = model

    def select(self, params: Sequence[Tensor], step: int, generator: Optional[torch.Generator] = None) -> Masks:
        """The user's masks (the same at every step; ``step`` and ``generator`` are unused), on the parameters' devices.

        Raises:
            ValueError: positional masks of another count than ``params``, or an index out of
                range for its parameter.
        """
        if self._by_position is not None:
            if len(self._by_position) != len(params):
                raise ValueError(f"masks: {len(self._by_position)} entries for {len(params)} trainable parameters")
            out = self._by_position
        else:
            names = _names_of(self.model)
            out = [self._by_name.get(names.get(id(p), ""), None) for p in params]
        for i, (p, m) in enumerate(zip(params, out)):
            if m is not None and m.numel() and int(m.max()) >= p.numel():
                raise ValueError(
                    f"masks[{i}]: index {int(m.max())} out of range for a parameter of {p.numel()} entries"
                )
        return [None if m is None else m.to(p.device) for p, m in zip(params, out)]

    def __repr__(self) -> str:
        n = len(self._by_name) if self._by_position is None else len(self._by_position)
        return f"FixedMask({n} masks)"


def _as_indices(mask: Any, param: Optional[Tensor], argument: str) -> Optional[Tensor]:
    """A boolean mask or an index tensor as sorted unique flat indices (LongTensor)."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"{argument} must be a torch.Tensor (bool mask or flat indices), got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        if param is not None and mask.shape != param.shape:
            raise ValueError(
                f"{argument}: boolean mask of shape {tuple(mask.shape)} for a parameter of shape {tuple(param.shape)}"
            )
        return mask.reshape(-1).nonzero().reshape(-1)
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(f"{argument}: expected a bool mask or integer indices, got dtype {mask.dtype}")
    idx = torch.unique(mask.reshape(-1).to(torch.long))
    if idx.numel() and int(idx.min()) < 0:
        raise ValueError(f"{argument}: negative flat index {int(idx.min())}")
    if param is not None and idx.numel() and int(idx.max()) >= param.numel():
        raise ValueError(f"{argument}: index {int(idx.max())} out of range for a parameter of {param.numel()} entries")
    return idx
