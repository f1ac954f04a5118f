r"""``ZOOptimizer``: a drop-in ``torch.optim.Optimizer`` that never calls backward.

One step (DESIGN.md §1)::

    masks  = sparsity.select(...)                      # which coordinates (optional)
    dirs   = estimator.directions(params, masks)       # what to perturb
    losses = evaluator.evaluate(objective, dirs)       # ℓ at θ + μ·dₑ, fast
    p.grad = estimator.combine(dirs, losses)           # finite differences → .grad
    base.step()                                        # SGD / Adam / any torch optimizer

The gradient is :math:`\hat g_j = \sum_i c_i d_{ij} / \mu_j` with coefficients ``c`` from the
estimator (see :mod:`zeroth.estimators`). ``estimate_gradient`` is the functional core; the
class adds parameter groups, the base rule, the generator and checkpointing.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import Tensor

from .engine import EVALUATORS, Evaluator, Losses
from .engine.base import StepState
from .errors import EvaluationError, NonFiniteLossWarning, ZerothError
from .estimators import ESTIMATORS, Estimator
from .estimators.directions import RandomDirections
from .estimators.estimators import _check_mu
from .estimators.exact_perturbation import ExactRademacher
from .objective import Objective, scalar_loss

BASE_OPTIMIZERS: Dict[str, Type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}


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
    """``(loss, grads, losses)``: a ZO gradient of ``objective`` at ``params`` (left unchanged).

    ``loss`` is ℓ(θ) (for two-sided schemes the mean of ℓ(θ ± μd), equal to ℓ(θ) up to O(μ²)).
    Raises :class:`EvaluationError` if any evaluated loss is NaN or infinite.
    """
    dirs, losses, coeffs = estimate_coefficients(objective, params, estimator, evaluator, mus=mus,
                                                 generator=generator, masks=masks)
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
    """``(dirs, losses, coeffs)``: the gradient in factored form, ``ĝ_j = Σ_i c_i d_ij / μ_j``.

    Nothing of parameter size is allocated here (random directions are regenerated from
    their seed), so :func:`sgd_step_` can apply ĝ without ever storing it.
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
    time (coordinates: one scatter). ``maximize`` (one flag, or one per parameter) ascends.
    """
    ascend = [maximize] * len(params) if isinstance(maximize, bool) else list(maximize)
    with torch.no_grad():
        for p, lr, wd in zip(params, lrs, weight_decays):
            if wd:
                p.mul_(1.0 - lr * wd)
        dirs.accumulate(coeffs, list(params), scales=[lr if up else -lr for lr, up in zip(lrs, ascend)])


def step_loss(losses: Losses) -> Tensor:
    """The loss a step reports: ℓ(θ), or the mean of the two-sided values."""
    if losses.base is not None:
        return losses.base
    return losses.perturbed.mean().to(losses.perturbed.dtype)


def check_finite(losses: Losses) -> None:
    """Raise :class:`EvaluationError` naming the first non-finite evaluation."""
    if losses.base is not None and not bool(torch.isfinite(losses.base)):
        raise EvaluationError(f"objective returned a non-finite loss ({float(losses.base)}) at the current point")
    bad = (~torch.isfinite(losses.perturbed)).nonzero()
    if bad.numel():
        first = int(bad[0])
        raise EvaluationError(
            f"objective returned a non-finite loss at {bad.numel()} of {losses.perturbed.numel()} "
            f"perturbed points (first: evaluation {first}, value {float(losses.perturbed[first])})"
        )


class BackwardInClosureError(ZerothError, RuntimeError):
    """A closure given to :class:`ZOOptimizer` called ``backward()`` (it only has to return the loss)."""


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
    Returns ``(losses, coeffs)``.
    """
    state = StepState(objective, params)
    n = len(dirs)
    out = torch.empty(n, dtype=torch.float64)
    base, current = None, None
    try:
        with torch.no_grad():
            if dirs.needs_base:
                state.before()
                base = scalar_loss(objective())
                state.after()
            for e in range(n):
                state.before()
                if current is None:
                    dirs.perturb(params, e)
                else:
                    dirs.move(params, current, e)
                current = e
                try:
                    value = scalar_loss(objective())
                except BaseException as err:
                    err.add_note(f"zeroth: raised in evaluation {e} of {n}; parameters were restored")
                    raise
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
        state.finish()
        raise
    coeffs = estimator.combine(dirs, losses.base, losses.perturbed)
    if current is not None:
        if update is None:
            dirs.restore(params, current, None)
        else:
            lrs, wds, ascend = update
            dirs.update_(params, coeffs, lrs, wds, ascend, restore=current)
    state.finish()
    return losses, coeffs


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
    raise TypeError(f"base must be a name ({', '.join(BASE_OPTIMIZERS)}) or a torch.optim.Optimizer class, got {base!r}")


def _inplace_evaluator(evaluator: Any) -> Any:
    """The evaluator of an ``inplace=True`` optimizer: ``Sequential(restore="inverse")`` (nothing copied)."""
    from .engine import Sequential

    if isinstance(evaluator, str) and evaluator.lower() in ("auto", "sequential"):
        return Sequential(restore="inverse")
    if isinstance(evaluator, Sequential) and evaluator.restore == "inverse":
        return evaluator
    raise ValueError(f"evaluator: inplace=True evaluates with Sequential(restore='inverse') (no parameter copy), "
                     f"got {evaluator!r}")


def _unhooked_step(opt: torch.optim.Optimizer) -> None:
    """``opt.step()`` without torch's step hooks (they already ran for the ZOOptimizer's own step)."""
    fn = type(opt).step
    getattr(fn, "__wrapped__", fn)(opt)


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
        seed: seed of the optimizer's generator (every random choice flows from it; it is
            saved in ``state_dict``). ``None`` draws one from torch's global RNG.
        nan_policy: ``"raise"`` (default) raises :class:`~zeroth.errors.EvaluationError` when a
            loss is NaN/inf; ``"skip"`` warns and skips the step. Either way parameters and
            optimizer state are left exactly as they were.
        inplace: MeZO's memory-lean step (default ``False``): parameters are perturbed and
            restored in place (no parameter copy) and SGD is applied straight from the
            regenerated directions — no gradient tensor, so a step needs the memory of
            inference plus a few small chunks. Needs ``base="sgd"`` without momentum; ``p.grad``
            is left untouched. With Rademacher directions (SPSA's default, ``RGE(dist=
            "rademacher")``) the perturbations are exact involutions
            (:mod:`zeroth.estimators.exact_perturbation`): μ is rounded to a power of two, the
            restore is bitwise in every dtype and the update uses the perturbation actually
            applied; SPSA's step is fused into 3 passes over the parameters. Gaussian/sphere
            directions are undone by subtraction (about one ulp per evaluation); coordinates
            (CGE) restore bitwise.

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
        nan_policy: str = "raise",
        mu: Optional[float] = None,
        inplace: bool = False,
        **base_kwargs: Any,
    ):
        _check_lr(lr)
        if not isinstance(inplace, bool):
            raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
        if estimator is None:
            estimator = "spsa" if inplace else "cge"
        estimator = ESTIMATORS.create(estimator, "estimator")
        if inplace:
            evaluator = _inplace_evaluator(evaluator)
        evaluator = EVALUATORS.create(evaluator, "evaluator")
        base_cls = _base_class(base)
        if inplace and base_cls is not torch.optim.SGD:
            raise ValueError(f"base: inplace=True applies SGD itself (no gradient is stored), got base={base!r}; "
                             "use base='sgd' or inplace=False")
        if nan_policy not in ("raise", "skip"):
            raise ValueError(f"Invalid nan_policy value: {nan_policy!r} (expected 'raise' or 'skip')")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        if sparsity is not None and not callable(getattr(sparsity, "select", None)):
            raise TypeError("sparsity must provide select(params, step, generator)")
        if mu is not None:
            mu = _check_mu(mu)

        super().__init__(params, dict(lr=lr, mu=mu))
        try:
            self.base = base_cls(self.param_groups, lr=lr, **base_kwargs)
        except TypeError as err:
            raise TypeError(f"base optimizer {base_cls.__name__} rejected its options {sorted(base_kwargs)}: {err}") from err
        # one list of groups and one state: the base rule's (the dicts were already shared)
        self.__dict__.pop("_zo_param_groups", None)
        self.__dict__.pop("_zo_state", None)
        # schedulers read defaults (OneCycleLR looks for momentum/betas there)
        self.defaults = {**self.base.defaults, **self.defaults}

        self.inplace = inplace
        if inplace:
            self._check_inplace_groups()
        self.estimator = estimator
        self.evaluator = evaluator
        self.sparsity = sparsity
        self.nan_policy = nan_policy
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        self.zo_steps = 0
        self.num_evaluations = 0
        self.last_losses: Optional[Losses] = None
        self._pending: Optional[Tuple[Any, ...]] = None

    # -- one list of groups, one state: the base rule's -----------------------------------
    @property
    def param_groups(self) -> List[Dict[str, Any]]:  # type: ignore[override]
        base = self.__dict__.get("base")
        return base.param_groups if base is not None else self.__dict__["_zo_param_groups"]

    @param_groups.setter
    def param_groups(self, groups: List[Dict[str, Any]]) -> None:
        base = self.__dict__.get("base")
        if base is not None:
            base.param_groups = groups
        else:
            self.__dict__["_zo_param_groups"] = groups

    @property
    def state(self):  # type: ignore[override]
        base = self.__dict__.get("base")
        return base.state if base is not None else self.__dict__["_zo_state"]

    @state.setter
    def state(self, value) -> None:
        base = self.__dict__.get("base")
        if base is not None:
            base.state = value
        else:
            self.__dict__["_zo_state"] = value

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a group (validated: floating-point parameters, ``lr``, ``mu``) to the one shared list."""
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
                raise TypeError(f"params: ZOOptimizer needs real floating-point parameters, got dtype {p.dtype} "
                                f"in param group {gi}")
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
                raise ValueError(f"momentum: inplace=True has no momentum buffer (MeZO's SGD), param group {gi} has "
                                 f"momentum={group.get('momentum')}, nesterov={group.get('nesterov')}; "
                                 "use momentum=0 or inplace=False")

    # -- the step -----------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Optional[Tensor]:  # type: ignore[override]
        """One ZO step on ``closure`` (an Objective or a callable returning the loss); returns the loss.

        Without a closure, applies the estimate of a preceding :meth:`estimate` call (and
        returns None, like torch optimizers); raises ``TypeError`` when there is none.
        """
        if closure is None:
            if self._pending is None:
                raise TypeError("ZOOptimizer.step needs a closure returning the loss (an Objective or a callable), "
                                "or a preceding estimate(closure)")
            self._apply_pending()
            return None
        return self._run(closure, apply=True)

    @torch.no_grad()
    def estimate(self, closure: Callable[[], Any]) -> Optional[Tensor]:
        """The gradient estimate at the current point, parameters unchanged; ``step()`` then applies it.

        The zeroth-order counterpart of ``loss.backward()``: with ``inplace=False`` it writes
        ``p.grad``; with ``inplace=True`` it keeps only the per-direction coefficients (the
        directions are regenerated by ``step()``). Returns the loss at the current point.
        """
        if closure is None or not callable(closure):
            raise TypeError("estimate needs a closure returning the loss (an Objective or a callable)")
        return self._run(closure, apply=False)

    def _run(self, objective: Callable[[], Any], apply: bool) -> Optional[Tensor]:
        if not callable(objective):
            raise TypeError(f"ZOOptimizer.step needs a callable closure returning the loss, got {type(objective).__name__}")
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
        hyper = ([float(g["lr"]) for g in groups], [float(g.get("weight_decay", 0.0)) for g in groups],
                 [bool(g.get("maximize", False)) for g in groups])
        try:
            masks = self.sparsity.select(params, self.zo_steps, self.generator) if self.sparsity is not None else None
            dirs = self.estimator.directions(params, mus=mus, generator=self.generator, masks=masks)
            if self.inplace and isinstance(dirs, RandomDirections) and dirs.dist == "rademacher":
                dirs = ExactRademacher.from_directions(dirs, params)
                losses, coeffs = exact_inplace_step(objective, params, dirs, self.estimator,
                                                    update=hyper if apply else None)
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
            if isinstance(err, EvaluationError) and self.nan_policy == "skip":
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
        """Base optimizer state + ``"zeroth"``: generator, step count, sparsity state."""
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
