r"""The contracts between zeroth's boxes, as :class:`typing.Protocol`\ s.

One optimizer step (:class:`~zeroth.ZOOptimizer`, :func:`~zeroth.optim.estimate_coefficients`)::

    masks  = mask_rule.select(params, step, generator)        # MaskRule   (optional)
    dirs   = estimator.directions(params, mus=, generator=, masks=)   # Estimator -> Directions
    losses = evaluator.evaluate(objective, params, dirs)      # Evaluator  -> Losses
    coeffs = estimator.combine(dirs, losses.base, losses.perturbed)
    dirs.accumulate(coeffs, grads)                            # ĝ_j = Σ_i c_i d_ij / span_ij

Any object with these methods plugs in; the classes in :mod:`zeroth.estimators`,
:mod:`zeroth.engine` and :mod:`zeroth.sparsity` are the implementations shipped. Evaluators
and distribution never test a direction set's class: they use ``kind``, ``perturb``/``restore``
(sequential), ``perturbed_stack`` (vmap), ``subset``/``to_devices`` (splitting across workers),
and :class:`~zeroth.estimators.directions.Coordinates`' ``steps``/``values`` (difference
propagation). The checks are structural (``isinstance(x, Directions)`` with these runtime-
checkable protocols only looks at attribute names).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Directions(Protocol):
    r"""The evaluation points of one step: ``θ + s·dₑ`` for evaluations ``e = 0 … len−1``.

    Layout (every evaluator and estimator relies on it): for two-sided schemes
    (``num_signs == 2``) evaluations ``0 … n−1`` are the ``+`` points and ``n … 2n−1`` the ``−``
    points of the same ``n = num_directions`` directions, in the same order.

    Attributes:
        kind: ``"coordinates"`` (unit vectors, CGE) or ``"random"`` (dense random vectors, RGE/SPSA).
        mus: the nominal perturbation size μ_j per parameter tensor (absolute, in the parameter's units).
        num_signs: 1 (one-sided: ℓ(θ) is evaluated too, ``needs_base``) or 2 (two-sided).
    """

    kind: str
    mus: List[float]
    num_signs: int

    @property
    def num_directions(self) -> int:
        """Number of distinct directions ``n`` (``len(dirs) == n · num_signs`` evaluations)."""
        ...

    @property
    def needs_base(self) -> bool:
        """Whether ℓ(θ) at the unperturbed point is needed too (one-sided schemes)."""
        ...

    def __len__(self) -> int: ...

    def perturb(self, params: Sequence[Tensor], e: int, exact: bool = True) -> Any:
        """Move ``params`` (in place, under ``no_grad``) to evaluation point ``e``; return a token for ``restore``."""

    def restore(self, params: Sequence[Tensor], e: int, token: Any) -> None:
        """Undo ``perturb(params, e)`` (bitwise when the token holds the old values)."""

    def perturbed_stack(self, params: Sequence[Tensor], lo: int, hi: int) -> List[Tensor]:
        """Per parameter, a ``(hi − lo, *param.shape)`` tensor of the perturbed values of evaluations ``lo … hi−1``."""

    def accumulate(self, coeffs: Tensor, grads: Sequence[Tensor], scales: Optional[Sequence[float]] = None) -> None:
        """``grads[j] += scales[j] · Σ_i coeffs[i] · d_ij / span_ij`` in place (``coeffs``: ``(num_directions,)``)."""

    def subset(self, ids: Tensor) -> Directions:
        """Directions ``ids`` (ascending int64) as a set of their own, in the same evaluation layout."""

    def to_devices(self, devices: Sequence[torch.device]) -> Directions:
        """The same set with parameter ``j``'s tensors on ``devices[j]``."""


@runtime_checkable
class Estimator(Protocol):
    r"""A gradient estimator: which points to evaluate, and how their losses become a gradient.

    ``directions`` picks the points; ``combine`` turns the losses into per-direction
    coefficients ``c`` (shape ``(num_directions,)``, float64) with ``ĝ = Σ_i c_i d_i / span_i``.
    """

    mu: float

    def directions(
        self,
        params: Sequence[Tensor],
        *,
        mus: Optional[Sequence[float]] = None,
        generator: Optional[torch.Generator] = None,
        masks: Optional[Sequence[Optional[Tensor]]] = None,
    ) -> Directions:
        """The direction set of one step.

        Args:
            params: the parameter tensors the estimate is for.
            mus: one step μ_j per tensor, absolute (in the tensor's units); None: ``self.mu``.
            generator: the only source of randomness allowed (a seeded run is reproducible).
            masks: per tensor, a 1-D int64 tensor of flat (row-major) indices to estimate, or
                None for all of them.

        Returns:
            A :class:`Directions` over ``params``.
        """

    def combine(self, dirs: Directions, base: Optional[Tensor], losses: Tensor) -> Tensor:
        """Per-direction coefficients from the losses; pure (no state, no randomness).

        Args:
            dirs: the direction set the losses were evaluated on.
            base: ℓ(θ), 0-d, or None for two-sided schemes.
            losses: ``(len(dirs),)`` float64 (trailing dimensions allowed: one estimate per output).

        Returns:
            ``(dirs.num_directions, ...)`` coefficients ``c`` with ``ĝ = Σ_i c_i d_i / span_i``.
        """

    def num_evaluations(self, dim: int) -> int:
        """Loss evaluations one step costs for ``dim`` estimated coordinates."""


@runtime_checkable
class Evaluator(Protocol):
    """Computes the losses of a direction set: what :class:`~zeroth.engine.SequentialEvaluator` computes, faster.

    ``supports`` answers before anything runs (a truthy/falsy :class:`~zeroth.engine.base.Support`
    whose ``reason`` says why not); ``evaluate`` returns :class:`~zeroth.engine.base.Losses` —
    ``base`` (0-d, ℓ(θ), or None when ``dirs.needs_base`` is false) and ``perturbed``
    (``(len(dirs),)`` float64) — and leaves parameters bitwise as they were, buffers and the RNG as
    after one evaluation (:class:`~zeroth.engine.base.StepState`). An evaluator that finds a case it
    cannot compute exactly raises :class:`~zeroth.engine.base.Unsupported` with everything restored.
    """

    def supports(
        self, objective: Any, dirs: Optional[Directions] = None, params: Optional[Sequence[Tensor]] = None
    ) -> Any:
        """Whether :meth:`evaluate` computes this case exactly, decided before anything runs.

        Args:
            objective: an :class:`~zeroth.Objective` or a plain closure returning the loss.
            dirs: the direction set (None: any).
            params: the perturbed parameter tensors (None: any).

        Returns:
            A truthy/falsy :class:`~zeroth.engine.base.Support`; a false one's ``reason`` says why.
        """
        ...

    def evaluate(self, objective: Any, params: Sequence[Tensor], dirs: Directions) -> Any:
        """The loss at every evaluation point of ``dirs`` (and at θ when ``dirs.needs_base``).

        Args:
            objective: an :class:`~zeroth.Objective` or a plain closure returning the scalar loss.
            params: the tensors ``dirs`` perturbs, in its order.
            dirs: the direction set.

        Returns:
            :class:`~zeroth.engine.base.Losses` ``(base, perturbed)``: ``base`` 0-d or None,
            ``perturbed`` of shape ``(len(dirs),)``, float64.

        Raises:
            zeroth.engine.base.Unsupported: a case found mid-way that cannot be computed
                exactly; parameters, buffers and RNG are restored first.
        """
        ...


@runtime_checkable
class MaskRule(Protocol):
    """Which coordinates a step estimates (sparse CGE/RGE, DeepZero's ZO-GraSP masks).

    ``select`` returns, per parameter, a 1-D int64 tensor of flat (row-major) indices, or None for
    "all of it"; it may draw from ``generator`` only (so a seeded run is reproducible), and its
    schedule is saved by ``state_dict``/``load_state_dict``.
    """

    def select(
        self, params: Sequence[Tensor], step: int, generator: Optional[torch.Generator] = None
    ) -> List[Optional[Tensor]]:
        """The coordinates optimizer step ``step`` estimates.

        Args:
            params: the trainable parameter tensors, in the optimizer's order.
            step: the optimizer's step count (0 for the first step).
            generator: the optimizer's generator, the only source of randomness allowed.

        Returns:
            Per parameter, a 1-D int64 tensor of flat (row-major) indices on the parameter's
            device, or None for all of its coordinates.
        """
        ...

    def state_dict(self) -> Dict[str, Any]:
        """The rule's schedule state (masks in use, position), for checkpoints."""
        ...

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, so a resumed run selects the same coordinates."""
        ...
