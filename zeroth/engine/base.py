"""The evaluator interface: losses at θ + s·μ·dₑ for every evaluation of a direction set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.utils.hooks import RemovableHandle

from ..errors import ZerothError, add_note
from ..estimators.directions import Directions
from ..registry import Registry


@dataclass(frozen=True)
class Support:
    """Whether an evaluator computes a case exactly; ``reason`` says why not (or what it uses).

    Truthy when supported, so ``if evaluator.supports(...)`` reads naturally.
    """

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok

    @classmethod
    def no(cls, reason: str) -> Support:
        """A falsy ``Support`` carrying ``reason`` (one sentence naming the layer, loss or target kind)."""
        return cls(False, reason)


YES = Support(True, "")


class Unsupported(ZerothError):
    """Raised by a fast evaluator that finds, while evaluating, a case it cannot compute exactly.

    Parameters, buffers and the RNG are restored before it is raised; ``evaluator="auto"``
    catches it and runs the next evaluator.
    """


class Losses(NamedTuple):
    """``base`` = ℓ(θ) (None when the scheme does not need it); ``perturbed[e]`` = ℓ at evaluation e."""

    base: Optional[Tensor]
    perturbed: Tensor

    # a deliberate public property shadowing tuple.count (a method): mypy cannot type an override of a method
    # by a property, and the name is public API
    @property
    def count(self) -> int:  # type: ignore[override]
        """Number of loss evaluations these values cost."""
        return int(self.perturbed.shape[0]) + (self.base is not None)


class Evaluator:
    """Base class: ``supports(objective, dirs)`` and ``evaluate(objective, params, dirs)``.

    Every evaluator must return the same values as :class:`~zeroth.engine.SequentialEvaluator`
    (up to floating-point reordering) and must leave parameters bitwise unchanged.
    """

    name = "evaluator"

    def supports(
        self, objective: Any, dirs: Optional[Directions] = None, params: Optional[Sequence[Tensor]] = None
    ) -> Support:
        """Whether this evaluator computes ``dirs`` of ``params`` on ``objective`` exactly (truthy
        :class:`Support`; a false one carries the reason)."""
        return YES

    def evaluate(self, objective: Any, params: Sequence[Tensor], dirs: Directions) -> Losses:
        """The losses at the evaluation points of ``dirs``.

        Args:
            objective: an :class:`~zeroth.Objective` or a closure returning the scalar loss
                (called with no arguments, under ``torch.no_grad()``).
            params: the parameter tensors ``dirs`` perturbs, in its order.
            dirs: the direction set of the step (``len(dirs)`` evaluations).

        Returns:
            :class:`Losses`: ``base`` = ℓ(θ) (a 0-d float64 tensor; None when ``dirs`` is
            two-sided and the evaluator did not compute it) and ``perturbed``, float64 of shape
            ``(len(dirs),)`` with ``perturbed[e]`` = ℓ(θ + s_e μ d_e) in ``dirs``' order.
            Parameters are bitwise as before on return, also when an exception is raised.

        Raises:
            NotImplementedError: in the base class.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


EVALUATORS = Registry("evaluator", Evaluator)


class StepState:
    """Common random numbers and module state for all evaluations of one step.

    Every evaluation starts from the same RNG state (so dropout or noise is the same for all
    perturbations and cancels in the differences) and the same module buffers (BatchNorm
    running statistics, spectral norm's power-iteration vector, any buffer a forward changes),
    so buffers change once per step, as in one first-order step, not once per evaluation. At
    the end RNG and buffers are left as after one forward at the unperturbed θ: the first
    evaluation when it is ℓ(θ) (one-sided schemes); for two-sided schemes, whose evaluations
    are all perturbed, :meth:`settle_at_theta` runs one more forward at θ when (and only when)
    the forward changes buffers, as the evaluators that compute ℓ(θ) anyway leave them.

    The buffers are found without help from the caller: during the first evaluation a global
    forward pre-hook (``torch.nn.modules.module.register_module_forward_pre_hook``) records
    each module that runs and snapshots its own buffers before its forward; after it, the
    buffers whose values changed are the ones put back before every later evaluation. A plain
    closure therefore behaves like an :class:`~zeroth.Objective`. Buffers changed outside any
    module's forward (by the closure's own code) are not seen; ``objective.state_tensors()``,
    when defined, adds tensors to watch.
    """

    def __init__(self, objective: Any, params: Sequence[Tensor]):
        self._cuda = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
        self._rng = self._get_rng()
        self._watched: Dict[int, Tuple[Tensor, Tensor]] = {}  # id -> (buffer, value before the step)
        self._owners: Dict[int, List[Tuple[nn.Module, str]]] = {}  # id -> where the buffer is registered
        getter = getattr(objective, "state_tensors", None)
        for t in getter() if callable(getter) else []:
            self._watch(t)
        self._seen: set = set()
        self._hook: Optional[RemovableHandle] = None
        self._evaluations = 0
        self._changed: List[Tuple[Tensor, Tensor, Tensor]] = []  # (buffer, before, after the first evaluation)

    # -- discovery ------------------------------------------------------------------------
    def _watch(self, t: Tensor, owner: Optional[Tuple[nn.Module, str]] = None) -> None:
        if id(t) not in self._watched:
            self._watched[id(t)] = (t, t.detach().clone())
        if owner is not None:
            self._owners.setdefault(id(t), []).append(owner)

    def _pre_hook(self, module: nn.Module, inputs: Any) -> None:
        if id(module) in self._seen:
            return
        self._seen.add(id(module))
        for name, buf in module._buffers.items():
            if buf is not None:
                self._watch(buf, (module, name))

    # -- the protocol every evaluator follows ----------------------------------------------
    def _get_rng(self):
        return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in self._cuda]

    def _set_rng(self, state) -> None:
        cpu, cuda = state
        torch.set_rng_state(cpu)
        for d, s in zip(self._cuda, cuda):
            torch.cuda.set_rng_state(s, d)

    def before(self) -> None:
        """Call before each evaluation: RNG and changed buffers as at the start of the step."""
        self._set_rng(self._rng)
        if self._evaluations == 0:
            if self._hook is None:
                self._hook = register_module_forward_pre_hook(self._pre_hook)
            return
        with torch.no_grad():
            for buf, before, _ in self._changed:
                buf.copy_(before)

    def after(self) -> None:
        """Call after each evaluation (parameters already restored)."""
        if self._evaluations == 0:
            self._remove_hook()
            self._after_first = self._get_rng()
            self._reattach()
            self._changed = [
                (buf, before, buf.detach().clone()) for buf, before in self._watched.values() if not _same(buf, before)
            ]
        self._evaluations += 1

    def settle_at_theta(self, objective: Any) -> None:
        """Run ``objective`` once more at θ (parameters already restored) when the evaluations
        changed buffers, so that buffers and RNG end as after one forward at θ.

        For two-sided schemes (no evaluation at θ). Costs one forward, only for models whose
        forward changes buffers (BatchNorm in train mode, spectral norm, ...).

        Args:
            objective: the step's objective (called with no arguments, under ``torch.no_grad()``).

        Raises:
            Exception: what the objective raises, with a note; the caller aborts the step.
        """
        if self._evaluations == 0 or not self._changed:
            return
        self.before()
        call_noted(objective, "in the forward at the unperturbed point that sets the buffers")
        self._after_first = self._get_rng()
        self._reattach()
        self._changed = [(buf, before, buf.detach().clone()) for buf, before, _ in self._changed]

    @property
    def buffers_changed(self) -> bool:
        """Whether the first evaluation changed any watched buffer."""
        return bool(self._changed)

    def changed_buffers(self) -> List[Tuple[nn.Module, str]]:
        """``(module, name)`` of every registered buffer the first evaluation changed."""
        return [owner for buf, _, _ in self._changed for owner in self._owners.get(id(buf), [])]

    def finish(self, failed: bool = False) -> None:
        """Leave RNG and buffers as after one evaluation (see the class doc).

        Args:
            failed: the step failed after all (a NaN/inf loss: the optimizer raises or omits
                the step), so RNG and buffers go back to what they were before it (:meth:`abort`).
        """
        if failed:
            self.abort()
            return
        self._remove_hook()
        if self._evaluations:
            self._set_rng(self._after_first)
            with torch.no_grad():
                for buf, _, after in self._changed:
                    buf.copy_(after)

    def abort(self) -> None:
        """A failed step: put RNG and every watched buffer back as they were before it."""
        self._remove_hook()
        self._set_rng(self._rng)
        self._reattach()
        with torch.no_grad():
            for buf, before in self._watched.values():
                buf.copy_(before)

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _reattach(self) -> None:
        """A forward that replaced a buffer object (``self.buf = new``) gets the watched one back."""
        for key, owners in self._owners.items():
            buf = self._watched[key][0]
            for module, name in owners:
                current = module._buffers.get(name)
                if current is not buf:
                    if current is not None and current.shape == buf.shape:
                        with torch.no_grad():
                            buf.copy_(current)
                    module._buffers[name] = buf


UNPERTURBED = "at the unperturbed point; parameters were not changed"
"""Where :func:`call_noted` says ℓ(θ) was being evaluated."""


def perturbed_point(e: int, n: int) -> str:
    """Where :func:`call_noted` says evaluation ``e`` (0-based) of ``n`` was being made."""
    return f"at perturbed point {e + 1} of {n}; parameters were restored"


def call_noted(objective: Any, where: str) -> Any:
    """``objective()``; an exception it raises gets the note ``"zeroth: raised {where}"`` (PEP 678,
    :func:`zeroth.errors.add_note`) and propagates.

    Raises:
        BaseException: whatever ``objective`` raises.
    """
    try:
        return objective()
    except BaseException as err:
        add_note(err, f"zeroth: raised {where}")
        raise


def all_finite(base: Optional[Tensor], perturbed: Tensor) -> bool:
    """Whether ℓ(θ) (when computed) and every perturbed loss are finite (a step with a NaN/inf
    loss fails: :meth:`StepState.finish` then leaves buffers as before it)."""
    return bool(torch.isfinite(perturbed).all()) and (base is None or bool(torch.isfinite(base)))


def _same(a: Tensor, b: Tensor) -> bool:
    """Bitwise equality (NaN equal to NaN in the same place)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(torch.equal(a, b) or ((a == b) | (a.isnan() & b.isnan())).all())
    return bool(torch.equal(a, b))


def only_batchnorm_statistics(state: StepState, who: str) -> None:
    """Check that the base pass changed no buffer other than BatchNorm's running statistics.

    Args:
        state: the step's :class:`StepState` after the base pass.
        who: the evaluator's name, for the message.

    Raises:
        Unsupported: another buffer changed (a copy could not reproduce it); the caller restores
            everything.
    """
    for module, name in state.changed_buffers():
        if not (
            isinstance(module, nn.modules.batchnorm._BatchNorm)
            and name in ("running_mean", "running_var", "num_batches_tracked")
        ):
            raise Unsupported(
                f"{who}: the forward changes buffer {name!r} of {type(module).__name__} "
                "(only BatchNorm running statistics can be kept once per step)"
            )
