r"""``ZOOptimizer``: a drop-in ``torch.optim.Optimizer`` that never calls backward.

One step (the contracts are in :mod:`zeroth.protocols`)::

    masks  = sparsity.select(...)                      # which coordinates (optional)
    dirs   = estimator.directions(params, masks)       # what to perturb
    losses = evaluator.evaluate(objective, dirs)       # ℓ at θ + μ·dₑ, fast
    p.grad = estimator.combine(dirs, losses)           # finite differences → .grad
    base.step()                                        # SGD / Adam / any torch optimizer

The gradient is :math:`\hat g_j = \sum_i c_i d_{ij} / \mu_j` with coefficients ``c`` from the
estimator (see :mod:`zeroth.estimators`). ``estimate_gradient`` is the functional core; the
class adds parameter groups, the base rule, the generator and checkpointing.

References:
    S. Malladi et al., "Fine-tuning language models with just forward passes", NeurIPS 2023,
    arXiv:2305.17333 (MeZO: the in-place step of ``inplace=True``, :func:`sgd_step_`).

    A. Chen et al., "DeepZero: scaling up zeroth-order optimization for deep model training",
    ICLR 2024, arXiv:2310.02025 (CGE with a base rule, sparse masks).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import Tensor

from .engine import EVALUATORS, Evaluator, Losses
from .engine.base import UNPERTURBED, StepState, call_noted, perturbed_point
from .errors import EvaluationError, NonFiniteLossWarning, ZerothError, warn_deprecated
from .estimators import ESTIMATORS, Estimator
from .estimators.directions import RandomDirections
from .estimators.estimators import _check_mu
from .estimators.exact_perturbation import ExactRademacher
from .objective import Objective, scalar_loss
from .randomness import make_generator

BASE_OPTIMIZERS: Dict[str, Type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}
"""The base rules ``ZOOptimizer(base=...)`` accepts by name (any ``torch.optim.Optimizer`` class works too)."""


def estimate_gradient(
    objective: Callable[[], Any],
    params: Sequence[Tensor],
    estimator: Estimator,
    evaluator: Evaluator,
    *,
    mus: Optional[Sequence[float]] = None,
    generator: Optional[torch.Generator] = None,
    masks: Optional[Sequence[Optional[Tensor]]] = None,
) -> Tuple[Tensor, List[Tensor], Losses]:
    """A zeroth-order gradient of ``objective`` at ``params`` (left bitwise unchanged).

    The functional core of :class:`ZOOptimizer` without a base rule, generator state or
    groups: directions, evaluation, differences, accumulation into fresh gradient tensors.

    Args:
        objective: an :class:`~zeroth.Objective` or any callable returning the scalar loss at
            the parameters' current values (it is called with the parameters perturbed in place).
        params: the parameter tensors to estimate (floating dtypes, any shapes and devices).
        estimator: an :class:`~zeroth.estimators.Estimator` (``CGE()``, ``RGE(q=...)``, ``SPSA()``).
        evaluator: an :class:`~zeroth.engine.Evaluator` (``SequentialEvaluator()`` always applies).
        mus: one step μ per tensor, absolute (in the tensor's units); None: ``estimator.mu``.
        generator: where random choices come from (None: torch's global RNG).
        masks: per tensor, None or a 1-D int64 tensor of flat indices to estimate (the others get 0).

    Returns:
        ``(loss, grads, losses)``: ``loss`` is ℓ(θ), 0-d (for two-sided schemes the float64
        mean of ℓ(θ ± μd), equal to ℓ(θ) up to O(μ²)); ``grads`` one tensor per parameter,
        shaped like it with its dtype and device; ``losses`` the raw
        :class:`~zeroth.engine.Losses`.

    Raises:
        zeroth.errors.EvaluationError: an evaluated loss is NaN or infinite.
        ValueError: invalid ``mus`` (one per tensor, each a finite number > 0).

    Exceptions of the objective propagate with a note naming the evaluation; parameters are
    restored first.
    """
    dirs, losses, coeffs = estimate_coefficients(
        objective, params, estimator, evaluator, mus=mus, generator=generator, masks=masks
    )
    grads = [torch.zeros_like(p) for p in params]
    dirs.accumulate(coeffs, grads)
    return step_loss(losses), grads, losses


def estimate_coefficients(
    objective: Callable[[], Any],
    params: Sequence[Tensor],
    estimator: Estimator,
    evaluator: Evaluator,
    *,
    mus: Optional[Sequence[float]] = None,
    generator: Optional[torch.Generator] = None,
    masks: Optional[Sequence[Optional[Tensor]]] = None,
) -> Tuple[Any, Losses, Tensor]:
    """The gradient estimate in factored form, ``ĝ_j = Σ_i c_i d_ij / μ_j``, without forming ĝ.

    Nothing of parameter size is allocated here (random directions are regenerated from
    their seed), so :func:`sgd_step_` can apply ĝ without ever storing it. Arguments as for
    :func:`estimate_gradient`.

    Returns:
        ``(dirs, losses, coeffs)``: the direction set, the :class:`~zeroth.engine.Losses`,
        and the ``(dirs.num_directions,)`` float64 coefficients (``dirs.accumulate(coeffs,
        grads)`` adds ĝ to ``grads``).

    Raises:
        zeroth.errors.EvaluationError: an evaluated loss is NaN or infinite.
        ValueError: invalid ``mus``.
    """
    dirs = estimator.directions(params, mus=mus, generator=generator, masks=masks)
    losses = evaluator.evaluate(objective, params, dirs)
    check_finite(losses)
    return dirs, losses, estimator.combine(dirs, losses.base, losses.perturbed)


def sgd_step_(
    params: Sequence[Tensor],
    dirs: Any,
    coeffs: Tensor,
    lrs: Sequence[float],
    weight_decays: Sequence[float],
    maximize: Union[bool, Sequence[bool]] = False,
) -> None:
    """``θ_j ← θ_j − lr_j (ĝ_j + wd_j θ_j)`` in place, ĝ never materialised (MeZO's update).

    The same step as ``torch.optim.SGD`` without momentum on ``p.grad = ĝ`` (up to rounding):
    weight decay scales θ first, then each direction is regenerated and added a chunk at a
    time (coordinates: one scatter). Runs under ``torch.no_grad()``.

    Args:
        params: the parameters, updated in place.
        dirs: the direction set of :func:`estimate_coefficients` (anything with ``accumulate``).
        coeffs: its ``(num_directions,)`` coefficients.
        lrs: one learning rate per parameter.
        weight_decays: one (L2, coupled) weight decay per parameter; it applies to every entry,
            masked or not.
        maximize: ascend instead (one flag, or one per parameter).
    """
    ascend = [maximize] * len(params) if isinstance(maximize, bool) else list(maximize)
    with torch.no_grad():
        for p, lr, wd in zip(params, lrs, weight_decays):
            if wd:
                p.mul_(1.0 - lr * wd)
        dirs.accumulate(coeffs, list(params), scales=[lr if up else -lr for lr, up in zip(lrs, ascend)])


def step_loss(losses: Losses) -> Tensor:
    """The loss a step reports: ℓ(θ) (0-d), or the float64 mean of the two-sided values."""
    if losses.base is not None:
        return losses.base
    return losses.perturbed.mean().to(losses.perturbed.dtype)


def check_finite(losses: Losses) -> None:
    """Check that every loss of a step is finite.

    Raises:
        zeroth.errors.EvaluationError: ℓ(θ) or a perturbed loss is NaN or infinite; the message
            names the first such evaluation and how many there were.
    """
    if losses.base is not None and not bool(torch.isfinite(losses.base)):
        raise EvaluationError(f"objective returned a non-finite loss ({float(losses.base)}) at the current point")
    bad = (~torch.isfinite(losses.perturbed)).nonzero()
    if bad.numel():
        first = int(bad[0])
        raise EvaluationError(
            f"objective returned a non-finite loss at {bad.numel()} of {losses.perturbed.numel()} "
            f"perturbed points (first: perturbed point {first + 1}, value {float(losses.perturbed[first])})"
        )


class BackwardInClosureError(ZerothError, RuntimeError):
    """A closure given to :class:`ZOOptimizer` called ``backward()`` (it only has to return the loss).

    The message says what to do instead (return the loss; Lightning's manual optimization;
    the Hugging Face ``ZOTrainer``). Gradients the closure created are removed first.
    """


_BACKWARD_HINT = (
    "the closure called backward(), but ZOOptimizer evaluates it under torch.no_grad() and needs only the loss "
    "value: return the loss without calling backward() (and without zero_grad()). In Lightning use manual "
    "optimization (self.automatic_optimization = False; in training_step: "
    "self.optimizers().step(closure=lambda: self.compute_loss(batch))) or "
    "zeroth.integrations.lightning.zo_training_step; with Hugging Face use "
    "zeroth.integrations.transformers.ZOTrainer"
)


def _grad_marks(params: Sequence[Tensor]) -> List[Any]:
    return [None if p.grad is None else (id(p.grad), p.grad._version) for p in params]


def _guard_backward(closure: Callable[[], Any], params: Sequence[Tensor]) -> Callable[[], Any]:
    """``closure``, checked for ``backward()`` calls: raises :class:`BackwardInClosureError` instead.

    Caught two ways: autograd's error for a backward() under ``no_grad`` (the loss has no
    graph), and — for closures that enable grad themselves, as Lightning's automatic
    optimization does — a parameter's ``.grad`` created or written during the call (the
    gradients it created are removed again).
    """

    def guarded():
        before = _grad_marks(params)
        try:
            value = closure()
        except RuntimeError as err:
            if "does not require grad" in str(err) and "grad_fn" in str(err):
                raise BackwardInClosureError(_BACKWARD_HINT) from err
            raise
        if _grad_marks(params) != before:
            for p, mark in zip(params, before):
                if mark is None:
                    p.grad = None
            raise BackwardInClosureError(_BACKWARD_HINT)
        return value

    return guarded


def exact_inplace_step(
    objective: Callable[[], Any],
    params: Sequence[Tensor],
    dirs: ExactRademacher,
    estimator: Estimator,
    update: Optional[Tuple[Sequence[float], Sequence[float], Sequence[bool]]] = None,
) -> Tuple[Losses, Tensor]:
    """Evaluate ``dirs`` in place with exact involutions and (optionally) apply SGD in the same pass.

    One pass per evaluation plus one: perturb to the first point, move straight from each point
    to the next, and finally restore — fused with ``update = (lrs, weight_decays, maximize)``
    when given (MeZO's step: 3 passes for SPSA). Restores are exact (bitwise) in every dtype.
    Dropout and buffers follow :class:`~zeroth.engine.StepState` (common random numbers). On an
    exception or a non-finite loss the parameters are restored before raising.

    Args:
        objective: callable returning the scalar loss at the current parameter values.
        params: the parameters ``dirs`` was made for.
        dirs: exact Rademacher directions (:class:`~zeroth.estimators.exact_perturbation.ExactRademacher`).
        estimator: the estimator whose ``combine`` turns the losses into coefficients.
        update: ``(lrs, weight_decays, maximize)`` per parameter to apply SGD in the final pass;
            None restores only.

    Returns:
        ``(losses, coeffs)``: the :class:`~zeroth.engine.Losses` and the coefficients.

    Raises:
        zeroth.errors.EvaluationError: a loss is NaN or infinite (parameters restored, not updated).
    """
    state = StepState(objective, params)
    n = len(dirs)
    out = torch.empty(n, dtype=torch.float64)
    base, current = None, None
    try:
        with torch.no_grad():
            if dirs.needs_base:
                state.before()
                base = scalar_loss(call_noted(objective, UNPERTURBED))
                state.after()
            for e in range(n):
                state.before()
                if current is None:
                    dirs.perturb(params, e)
                else:
                    dirs.move(params, current, e)
                current = e
                value = scalar_loss(call_noted(objective, perturbed_point(e, n)))
                state.after()
                out[e] = value.to(out.device, torch.float64)
    except BaseException:
        if current is not None:
            dirs.restore(params, current, None)
        state.abort()
        raise
    losses = Losses(base, out)
    try:
        check_finite(losses)
    except EvaluationError:
        if current is not None:
            dirs.restore(params, current, None)
        state.abort()  # a failed step: buffers and RNG as before it
        raise
    coeffs = estimator.combine(dirs, losses.base, losses.perturbed)
    if current is not None and not dirs.needs_base and state.buffers_changed:
        # two-sided: buffers as after one forward at θ, so restore first, then update alone
        dirs.restore(params, current, None)
        current = None
        try:
            with torch.no_grad():
                state.settle_at_theta(objective)
        except BaseException:
            state.abort()
            raise
        if update is not None:
            lrs, wds, ascend = update
            dirs.update_(params, coeffs, lrs, wds, ascend, restore=None)
    elif current is not None:
        if update is None:
            dirs.restore(params, current, None)
        else:
            lrs, wds, ascend = update
            dirs.update_(params, coeffs, lrs, wds, ascend, restore=current)
    state.finish()
    return losses, coeffs


def _own_or_base(opt: Any, name: str, own: str) -> Any:
    """``opt.base.<name>`` once the base rule exists, else the value kept under ``own`` during
    ``torch.optim.Optimizer.__init__``. A wrapper sharing ZOOptimizer's class but not its
    ``__dict__`` (Lightning's ``LightningOptimizer``) gets ``AttributeError``, so that its
    ``__getattr__`` forwards the lookup to the wrapped optimizer."""
    base = opt.__dict__.get("base")
    if base is not None:
        return getattr(base, name)
    if own not in opt.__dict__:
        raise AttributeError(name)
    return opt.__dict__[own]


def _check_lr(lr: Any) -> None:
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        lr = float(lr)
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"Invalid learning rate: {lr!r}")


def _base_class(base: Union[str, Type[torch.optim.Optimizer]]) -> Type[torch.optim.Optimizer]:
    if isinstance(base, str):
        try:
            return BASE_OPTIMIZERS[base.lower()]
        except KeyError:
            raise ValueError(f"base: unknown optimizer {base!r}; known: {', '.join(BASE_OPTIMIZERS)}") from None
    if isinstance(base, type) and issubclass(base, torch.optim.Optimizer) and not issubclass(base, ZOOptimizer):
        return base
    raise TypeError(
        f"base must be a name ({', '.join(BASE_OPTIMIZERS)}) or a torch.optim.Optimizer class, got {base!r}"
    )


def _inplace_evaluator(evaluator: Any) -> Any:
    """The evaluator of an ``inplace=True`` optimizer: ``SequentialEvaluator(restore="inverse")`` (nothing copied)."""
    from .engine import SequentialEvaluator

    if isinstance(evaluator, str) and evaluator.lower() in ("auto", "sequential"):
        return SequentialEvaluator(restore="inverse")
    if isinstance(evaluator, SequentialEvaluator) and evaluator.restore == "inverse":
        return evaluator
    raise ValueError(
        f"evaluator: inplace=True evaluates with SequentialEvaluator(restore='inverse') (no parameter copy), "
        f"got {evaluator!r}"
    )


def _check_inplace_directions(dist: Any, what: str) -> None:
    """``inplace=True`` restores exactly only Rademacher directions: refuse Gaussian/sphere ones.

    Raises:
        ValueError: ``dist`` is ``"gaussian"`` or ``"sphere"`` (the message names the exact alternatives).
    """
    if dist in ("gaussian", "sphere"):
        raise ValueError(
            f"dist: inplace=True perturbs and restores the parameters in place exactly only along Rademacher "
            f"directions, got {what} with dist={dist!r}, whose perturbation would be undone by subtraction "
            "(parameters drift by about one ulp per evaluation; MeZO issue #42). Use dist='rademacher' "
            "(SPSA() or RGE(q=..., dist='rademacher'): exact in every dtype, no parameter copy), or inplace=False "
            f"to keep dist={dist!r} (restored bitwise from a parameter copy)"
        )


def _unhooked_step(opt: torch.optim.Optimizer) -> None:
    """``opt.step()`` without torch's step hooks (they already ran for the ZOOptimizer's own step)."""
    fn = type(opt).step
    getattr(fn, "__wrapped__", fn)(opt)


def _check_on_failure(on_failure: Any, nan_policy: Any) -> str:
    """``ZOOptimizer``'s failure policy: ``on_failure``, or the deprecated ``nan_policy`` translated."""
    if nan_policy is not None:
        if on_failure != "raise":
            raise ValueError("pass either on_failure or nan_policy (deprecated), not both")
        if nan_policy not in ("raise", "skip"):
            raise ValueError(
                f"Invalid nan_policy value: {nan_policy!r} (expected 'raise' or 'skip'; "
                "nan_policy is deprecated: use on_failure='raise' or 'omit')"
            )
        on_failure = "omit" if nan_policy == "skip" else "raise"
        warn_deprecated(f"ZOOptimizer(nan_policy={nan_policy!r})", f"on_failure={on_failure!r}", stacklevel=4)
    if on_failure not in ("raise", "omit"):
        raise ValueError(f"Invalid on_failure value: {on_failure!r} (expected 'raise' or 'omit')")
    return on_failure


class ZOOptimizer(torch.optim.Optimizer):
    r"""Zeroth-order optimizer: estimates gradients from loss values, then takes a base step.

    Args:
        params: iterable of parameters or dicts defining parameter groups (as in torch.optim).
            Groups may set ``lr``, ``mu`` (perturbation size of that group) and any option of
            the base rule (``momentum``, ``weight_decay``, ``betas`` ...).
        lr: learning rate of the base rule.
        estimator: ``"cge"``, ``"rge"``, ``"spsa"`` or an :class:`~zeroth.estimators.Estimator`.
            Default: ``"spsa"`` (MeZO) with ``inplace=True``, ``"cge"`` otherwise.
        base: ``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``, ``"adagrad"`` or a
            ``torch.optim.Optimizer`` subclass; ``**base_kwargs`` go to its constructor.
        evaluator: ``"auto"`` (fastest that applies), ``"sequential"`` or an
            :class:`~zeroth.engine.Evaluator`.
        sparsity: optional mask rule with ``select(params, step, generator)`` (see
            :mod:`zeroth.sparsity`): only the selected coordinates are estimated.
        seed: seed of the optimizer's generator (every random choice flows from it; its state
            is saved in ``state_dict``). ``None`` (and no ``generator``) draws one from torch's
            global RNG.
        generator: a CPU ``torch.Generator`` to draw every random choice from instead (not
            copied; exclusive with ``seed``; see :mod:`zeroth.randomness`).
        on_failure: what a NaN/inf loss does: ``"raise"`` (default) raises
            :class:`~zeroth.errors.EvaluationError`; ``"omit"`` leaves the step out (no update,
            not counted) with a :class:`~zeroth.errors.NonFiniteLossWarning`. Either way
            parameters, optimizer state and generator are left exactly as they were. (The
            values are scipy's ``nan_policy`` words, shared with black boxes' ``on_failure``;
            ``"propagate"`` — a NaN update — is refused.)
        nan_policy: deprecated spelling of ``on_failure`` (``"skip"`` = ``"omit"``), accepted for
            one release with a :class:`~zeroth.errors.ZerothDeprecationWarning`.
        inplace: MeZO's memory-lean step (default ``False``): parameters are perturbed and
            restored in place (no parameter copy) and SGD is applied straight from the
            regenerated directions — no gradient tensor, so a step needs the memory of
            inference plus a few small chunks. Needs ``base="sgd"`` without momentum; ``p.grad``
            is left untouched. With Rademacher directions (SPSA's default, ``RGE(dist=
            "rademacher")``) the perturbations are exact involutions
            (:mod:`zeroth.estimators.exact_perturbation`): μ is rounded to a power of two, the
            restore is bitwise in every dtype and the update uses the perturbation actually
            applied; SPSA's step is fused into 3 passes over the parameters, each one compiled
            kernel (:func:`zeroth.ops.rademacher_involution_`, :func:`zeroth.ops.rademacher_sgd_`).
            Gaussian/sphere directions are refused (``ValueError`` naming ``dist``: they could
            only be undone by subtraction, which drifts); coordinates (CGE) restore bitwise.
        mu: the perturbation size of every group that sets none (an absolute step in the
            parameters' units, not relative to ``|θ|``); None: the estimator's ``mu``.
        **base_kwargs: options of the base rule (``momentum``, ``weight_decay``, ``betas`` ...).

    The torch.optim contract: ``step(closure)`` (positional or keyword) runs one ZO step on
    ``closure`` — an :class:`~zeroth.Objective` or any callable returning the scalar loss,
    called under ``torch.no_grad()`` (a closure that calls ``backward()`` raises
    :class:`BackwardInClosureError` saying what to do) — writes the estimate into ``p.grad``
    (reusing an existing ``.grad`` tensor), calls the base rule and returns the loss at the
    current point. ``param_groups`` and ``state`` are the base rule's own (one list, one
    dict), so ``add_param_group``, schedulers and tools reading ``optimizer.state`` see what
    the base rule uses; step pre/post hooks, ``zero_grad`` and ``state_dict`` behave as in
    torch. The two halves of a step are also available apart, as in first-order training:
    ``estimate(closure)`` (≈ ``loss.backward()``: the gradient estimate, parameters
    unchanged) then ``step()`` without a closure (the update).

    Attributes:
        base: the base rule instance (``torch.optim.SGD`` ...).
        generator: the CPU generator every random choice is drawn from.
        zo_steps: ZO steps taken (skipped steps not counted).
        num_evaluations: loss evaluations made so far.
        last_losses: the :class:`~zeroth.engine.Losses` of the last step.

    Raises:
        ValueError: an invalid ``lr`` (negative, non-finite, a tensor of more than one element),
            ``mu``, ``on_failure``, estimator or evaluator name, or base name; both ``seed``
            and ``generator``, both ``on_failure`` and ``nan_policy``; ``inplace=True``
            with a base other than SGD, with momentum/Nesterov, with Gaussian or sphere directions
            (``dist``), or with an evaluator other than ``SequentialEvaluator(restore="inverse")``.
        TypeError: ``inplace`` is not a bool, ``seed`` not an int, ``generator`` not a
            CPU ``torch.Generator``, ``sparsity`` has no
            ``select``, ``base`` is neither a name nor an optimizer class, the base rejects
            ``base_kwargs``, or a parameter is not floating-point.

    References:
        S. Malladi et al., "Fine-tuning language models with just forward passes", NeurIPS
        2023, arXiv:2305.17333 (MeZO, ``inplace=True``).

        A. Chen et al., "DeepZero", ICLR 2024, arXiv:2310.02025 (CGE + SGD with momentum, sparsity).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, Tensor] = 1e-3,
        *,
        estimator: Union[str, Estimator, None] = None,
        base: Union[str, Type[torch.optim.Optimizer]] = "sgd",
        evaluator: Union[str, Evaluator] = "auto",
        sparsity: Any = None,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        on_failure: str = "raise",
        nan_policy: Optional[str] = None,
        mu: Optional[float] = None,
        inplace: bool = False,
        **base_kwargs: Any,
    ):
        _check_lr(lr)
        if not isinstance(inplace, bool):
            raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
        if estimator is None:
            estimator = "spsa" if inplace else "cge"
        est: Estimator = ESTIMATORS.create(estimator, "estimator")
        ev: Evaluator = EVALUATORS.create(_inplace_evaluator(evaluator) if inplace else evaluator, "evaluator")
        base_cls = _base_class(base)
        if inplace and base_cls is not torch.optim.SGD:
            raise ValueError(
                f"base: inplace=True applies SGD itself (no gradient is stored), got base={base!r}; "
                "use base='sgd' or inplace=False"
            )
        on_failure = _check_on_failure(on_failure, nan_policy)
        generator = make_generator(seed, generator)
        if sparsity is not None and not callable(getattr(sparsity, "select", None)):
            hint = ""
            if isinstance(sparsity, numbers.Real) and not isinstance(sparsity, bool):
                # a sparsity level, not a rule: name the rules of zeroth.sparsity that take one
                hint = (
                    f"; to prune a fraction {sparsity!r} of every Linear/Conv weight, pass "
                    f"DynamicMask(uniform_ratios(model, {sparsity!r}), model=model) "
                    "(DynamicMask and uniform_ratios from zeroth.sparsity; DynamicMask also takes one "
                    "kept fraction, 1 - sparsity, or grasp_ratios(...))"
                )
            raise TypeError(
                f"sparsity must provide select(params, step, generator) (a mask rule of zeroth.sparsity), "
                f"got {type(sparsity).__name__}{hint}"
            )
        if mu is not None:
            mu = _check_mu(mu)

        super().__init__(params, dict(lr=lr, mu=mu))
        # a subclass of Optimizer: its constructor takes lr and the rule's options (Optimizer's own takes defaults)
        make_base: Callable[..., torch.optim.Optimizer] = base_cls
        try:
            self.base = make_base(self.param_groups, lr=lr, **base_kwargs)
        except TypeError as err:
            raise TypeError(
                f"base optimizer {base_cls.__name__} rejected its options {sorted(base_kwargs)}: {err}"
            ) from err
        # one list of groups and one state: the base rule's (the dicts were already shared)
        self.__dict__.pop("_zo_param_groups", None)
        self.__dict__.pop("_zo_state", None)
        # schedulers read defaults (OneCycleLR looks for momentum/betas there)
        self.defaults = {**self.base.defaults, **self.defaults}

        self.inplace = inplace
        if inplace:
            self._check_inplace_groups()
            _check_inplace_directions(getattr(est, "dist", None), type(est).__name__)
        self.estimator = est
        self.evaluator = ev
        self.sparsity = sparsity
        self.on_failure = on_failure
        self.generator = generator
        self.zo_steps = 0
        self.num_evaluations = 0
        self.last_losses: Optional[Losses] = None
        self._pending: Optional[Tuple[Any, ...]] = None

    # -- one list of groups, one state: the base rule's -----------------------------------
    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        """The parameter groups: the base rule's own list (each group also has ``"mu"``, None for the default)."""
        return _own_or_base(self, "param_groups", "_zo_param_groups")

    @param_groups.setter
    def param_groups(self, groups: List[Dict[str, Any]]) -> None:
        base = self.__dict__.get("base")
        if base is not None:
            base.param_groups = groups
        else:
            self.__dict__["_zo_param_groups"] = groups

    @property
    def state(self):
        """Per-parameter state: the base rule's own dict (momentum buffers, Adam moments ...)."""
        return _own_or_base(self, "state", "_zo_state")

    @state.setter
    def state(self, value) -> None:
        base = self.__dict__.get("base")
        if base is not None:
            base.state = value
        else:
            self.__dict__["_zo_state"] = value

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a group (validated: floating-point parameters, ``lr``, ``mu``) to the one shared list.

        Args:
            param_group: ``{"params": ..., "lr": ..., "mu": ..., <base rule options>}`` as for torch.optim.

        Raises:
            TypeError: ``param_group`` is not a dict, or a parameter is not floating-point.
            ValueError: an invalid ``lr`` or ``mu``; with ``inplace=True``, momentum in the group;
                the base rule's own errors (a parameter in two groups ...) propagate.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        params = param_group.get("params")
        tensors = [params] if isinstance(params, Tensor) else None
        if tensors is None and params is not None and not isinstance(params, set):
            params = list(params)
            param_group["params"] = params
            tensors = [p[1] if isinstance(p, tuple) else p for p in params]
        gi = len(self.param_groups)
        for p in tensors or []:
            if isinstance(p, Tensor) and not p.is_floating_point():
                raise TypeError(
                    f"params: ZOOptimizer needs real floating-point parameters, got dtype {p.dtype} in param group {gi}"
                )
        if "lr" in param_group:
            _check_lr(param_group["lr"])
        if param_group.get("mu") is not None:
            param_group["mu"] = _check_mu(param_group["mu"])
        base = self.__dict__.get("base")
        if base is None:  # during torch's __init__: the base rule takes these groups over
            super().add_param_group(param_group)
            return
        param_group.setdefault("mu", None)
        base.add_param_group(param_group)
        if self.inplace:
            self._check_inplace_groups()

    def __getstate__(self) -> Dict[str, Any]:
        return dict(self.__dict__)

    # -- parameters -------------------------------------------------------------------
    def trainable(self) -> Tuple[List[Tensor], List[float], List[Dict[str, Any]]]:
        """Parameters that take part in a step (``requires_grad=True``), their μ and group."""
        params, mus, groups = [], [], []
        for group in self.param_groups:
            mu = group["mu"] if group.get("mu") is not None else self.estimator.mu
            for p in group["params"]:
                if p.requires_grad:
                    params.append(p)
                    mus.append(mu)
                    groups.append(group)
        return params, mus, groups

    def _check_inplace_groups(self) -> None:
        for gi, group in enumerate(self.param_groups):
            if group.get("momentum", 0) or group.get("nesterov", False):
                raise ValueError(
                    f"momentum: inplace=True has no momentum buffer (MeZO's SGD), param group {gi} has "
                    f"momentum={group.get('momentum')}, nesterov={group.get('nesterov')}; "
                    "use momentum=0 or inplace=False"
                )

    # -- the step -----------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Optional[Tensor]:  # type: ignore[override]
        """One ZO step on ``closure``: estimate the gradient, then apply the base rule.

        Without a closure, applies the estimate of a preceding :meth:`estimate` call (and
        returns None, like torch optimizers).

        Args:
            closure: an :class:`~zeroth.Objective` or a callable returning the scalar loss
                (called several times under ``torch.no_grad()``, with the parameters perturbed
                in place; it must not call ``backward()``).

        Returns:
            The loss at the current point (0-d tensor; for two-sided schemes the mean of the
            two-sided values), None without a closure, without trainable parameters, or when
            ``on_failure="omit"`` left the step out (with a :class:`~zeroth.errors.NonFiniteLossWarning`).

        Raises:
            TypeError: no closure and no pending estimate, or ``closure`` is not callable.
            zeroth.errors.EvaluationError: a NaN/inf loss with ``on_failure="raise"``.
            BackwardInClosureError: a plain closure called ``backward()``.

        An error while estimating leaves parameters, optimizer state, generator and mask
        schedule as they were.
        """
        if closure is None:
            if self._pending is None:
                raise TypeError(
                    "ZOOptimizer.step needs a closure returning the loss (an Objective or a callable), "
                    "or a preceding estimate(closure)"
                )
            self._apply_pending()
            return None
        return self._run(closure, apply=True)

    @torch.no_grad()
    def estimate(self, closure: Callable[[], Any]) -> Optional[Tensor]:
        """The gradient estimate at the current point, parameters unchanged; ``step()`` then applies it.

        The zeroth-order counterpart of ``loss.backward()``: with ``inplace=False`` it writes
        ``p.grad``; with ``inplace=True`` it keeps only the per-direction coefficients (the
        directions are regenerated by ``step()``).

        Args:
            closure: as for :meth:`step`.

        Returns:
            The loss at the current point (as for :meth:`step`).

        Raises:
            TypeError: ``closure`` is None or not callable.
            zeroth.errors.EvaluationError: a NaN/inf loss with ``on_failure="raise"``.
            BackwardInClosureError: a plain closure called ``backward()``.
        """
        if closure is None or not callable(closure):
            raise TypeError("estimate needs a closure returning the loss (an Objective or a callable)")
        return self._run(closure, apply=False)

    def _run(self, objective: Callable[[], Any], apply: bool) -> Optional[Tensor]:
        if not callable(objective):
            raise TypeError(
                f"ZOOptimizer.step needs a callable closure returning the loss, got {type(objective).__name__}"
            )
        self._pending = None
        params, mus, groups = self.trainable()
        if not isinstance(objective, Objective):
            objective = _guard_backward(objective, params)
        if not params:
            return None
        gen_state = self.generator.get_state()
        sparsity_state = self.sparsity.state_dict() if self.sparsity is not None else None
        if self.inplace:
            self._check_inplace_groups()  # a group added or changed since __init__
        hyper = (
            [float(g["lr"]) for g in groups],
            [float(g.get("weight_decay", 0.0)) for g in groups],
            [bool(g.get("maximize", False)) for g in groups],
        )
        try:
            masks = self.sparsity.select(params, self.zo_steps, self.generator) if self.sparsity is not None else None
            dirs = self.estimator.directions(params, mus=mus, generator=self.generator, masks=masks)
            if self.inplace and isinstance(dirs, RandomDirections):  # checked again: the estimator may have changed
                _check_inplace_directions(dirs.dist, f"{type(self.estimator).__name__}'s directions")
            if self.inplace and isinstance(dirs, RandomDirections) and dirs.dist == "rademacher":
                dirs = ExactRademacher.from_directions(dirs, params)
                losses, coeffs = exact_inplace_step(
                    objective, params, dirs, self.estimator, update=hyper if apply else None
                )
                applied = apply
            else:
                losses = self.evaluator.evaluate(objective, params, dirs)
                check_finite(losses)
                coeffs = self.estimator.combine(dirs, losses.base, losses.perturbed)
                applied = False
        except BaseException as err:  # a failed step leaves generator and mask schedule as they were
            self.generator.set_state(gen_state)
            if sparsity_state is not None:
                self.sparsity.load_state_dict(sparsity_state)
            if isinstance(err, EvaluationError) and self.on_failure == "omit":
                warnings.warn(f"step skipped: {err}", NonFiniteLossWarning, stacklevel=3)
                return None
            raise
        if self.inplace:
            self._pending = None if applied else ("inplace", params, dirs, coeffs, groups)
        else:
            self._write_grads(params, dirs, coeffs)
            self._pending = ("grad",)
        if apply and not applied:
            self._apply_pending()
        self.zo_steps += 1
        self.num_evaluations += losses.count
        self.last_losses = losses
        return step_loss(losses)

    @staticmethod
    def _write_grads(params: Sequence[Tensor], dirs: Any, coeffs: Tensor) -> None:
        """``p.grad ← ĝ``, written into the existing ``.grad`` when it fits (no second gradient alive)."""
        grads = []
        for p in params:
            g = p.grad
            if g is None or g.shape != p.shape or g.dtype != p.dtype or g.device != p.device or g.is_sparse:
                p.grad = torch.zeros_like(p)
            else:
                g.zero_()
            grads.append(p.grad)
        dirs.accumulate(coeffs, grads)

    def _apply_pending(self) -> None:
        pending, self._pending = self._pending, None
        assert pending is not None  # both callers (step without a closure, _run) have one pending
        if pending[0] == "grad":
            _unhooked_step(self.base)
            return
        _, params, dirs, coeffs, groups = pending
        lrs = [float(g["lr"]) for g in groups]  # read now: a scheduler may have moved them (as for torch)
        wds = [float(g.get("weight_decay", 0.0)) for g in groups]
        ascend = [bool(g.get("maximize", False)) for g in groups]
        if isinstance(dirs, ExactRademacher):
            dirs.update_(params, coeffs, lrs, wds, ascend)
        else:
            sgd_step_(params, dirs, coeffs, lrs, wds, maximize=ascend)

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The base rule's ``state_dict`` plus a ``"zeroth"`` entry: generator, step and evaluation
        counts, the mask rule's and the evaluator's state (a resumed run continues bit-identically)."""
        sd = self.base.state_dict()
        sd["zeroth"] = {
            "generator": self.generator.get_state(),
            "zo_steps": self.zo_steps,
            "num_evaluations": self.num_evaluations,
            "sparsity": self.sparsity.state_dict() if self.sparsity is not None else None,
            "evaluator": self.evaluator.state_dict() if hasattr(self.evaluator, "state_dict") else None,
        }
        return sd

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (base rule state, generator, counters, mask schedule).

        A pending :meth:`estimate` is dropped.

        Raises:
            ValueError: ``state_dict`` has no ``"zeroth"`` entry (not a ZOOptimizer state);
                the base rule's own errors propagate.
        """
        if not isinstance(state_dict, dict) or "zeroth" not in state_dict:
            raise ValueError("state_dict: not a ZOOptimizer state_dict (no 'zeroth' entry)")
        sd = dict(state_dict)
        z = sd.pop("zeroth")
        self.base.load_state_dict(sd)  # replaces the base's group list: param_groups follows it
        self._pending = None
        self.generator.set_state(z["generator"])
        self.zo_steps = int(z["zo_steps"])
        self.num_evaluations = int(z.get("num_evaluations", 0))
        if self.sparsity is not None and z.get("sparsity") is not None:
            self.sparsity.load_state_dict(z["sparsity"])
        if hasattr(self.evaluator, "load_state_dict") and z.get("evaluator") is not None:
            self.evaluator.load_state_dict(z["evaluator"])

    def __repr__(self) -> str:
        return (
            f"ZOOptimizer(estimator={self.estimator!r}, evaluator={self.evaluator!r}, "
            f"base={type(self.base).__name__}, groups={len(self.param_groups)})"
        )
