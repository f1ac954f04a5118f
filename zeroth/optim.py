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
from .errors import EvaluationError, NonFiniteLossWarning
from .estimators import ESTIMATORS, Estimator
from .estimators.estimators import _check_mu

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


class ZOOptimizer(torch.optim.Optimizer):
    r"""Zeroth-order optimizer: estimates gradients from loss values, then takes a base step.

    Args:
        params: iterable of parameters or dicts defining parameter groups (as in torch.optim).
            Groups may set ``lr``, ``mu`` (perturbation size of that group) and any option of
            the base rule (``momentum``, ``weight_decay``, ``betas`` ...).
        lr: learning rate of the base rule.
        estimator: ``"cge"``, ``"rge"``, ``"spsa"`` or an :class:`~zeroth.estimators.Estimator`.
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
            optimizer state are left exactly as they were (with ``inplace=True``: up to the
            rounding of the inverse restore).
        inplace: MeZO's memory-lean step (default ``False``). Perturbations are applied and
            undone in place (``Sequential(restore="inverse")``: no parameter copy, rounding of
            about one ulp per evaluation) and the SGD update is applied straight from the
            regenerated directions (:func:`sgd_step_`): no gradient tensor, so a step needs
            the memory of inference plus one chunk of a direction. Needs ``base="sgd"``
            without momentum; ``p.grad`` is left untouched.

    ``step(objective)`` takes an :class:`~zeroth.Objective` or any closure returning a scalar
    loss, runs under ``torch.no_grad()`` (no backward), *sets* ``p.grad`` to the estimate,
    calls the base rule and returns the loss at the current point.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, Tensor] = 1e-3,
        *,
        estimator: Union[str, Estimator] = "cge",
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
        estimator = ESTIMATORS.create(estimator, "estimator")
        if not isinstance(inplace, bool):
            raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
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
        for gi, group in enumerate(self.param_groups):
            _check_lr(group["lr"])
            if group["mu"] is not None:
                group["mu"] = _check_mu(group["mu"])
            for p in group["params"]:
                if not p.is_floating_point():
                    raise TypeError(
                        f"params: ZOOptimizer needs real floating-point parameters, got dtype {p.dtype} "
                        f"in param group {gi}"
                    )
        try:
            self.base = base_cls(self.param_groups, lr=lr, **base_kwargs)
        except TypeError as err:
            raise TypeError(f"base optimizer {base_cls.__name__} rejected its options {sorted(base_kwargs)}: {err}") from err
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

    # -- parameters -------------------------------------------------------------------
    def trainable(self) -> Tuple[List[Tensor], List[float], List[Dict[str, Any]]]:
        """Parameters that take part in a step (``requires_grad=True``), their μ and group."""
        params, mus, groups = [], [], []
        for group in self.param_groups:
            mu = group["mu"] if group["mu"] is not None else self.estimator.mu
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
    def step(self, objective: Callable[[], Any] = None) -> Optional[Tensor]:  # type: ignore[override]
        """One ZO step on ``objective`` (an Objective or a closure returning the loss)."""
        if objective is None or not callable(objective):
            raise TypeError("ZOOptimizer.step needs an objective: an Objective or a closure returning the loss")
        params, mus, groups = self.trainable()
        if not params:
            return None
        gen_state = self.generator.get_state()
        sparsity_state = self.sparsity.state_dict() if self.sparsity is not None else None
        if self.inplace:
            self._check_inplace_groups()  # a group added or changed since __init__
        try:
            masks = self.sparsity.select(params, self.zo_steps, self.generator) if self.sparsity is not None else None
            dirs, losses, coeffs = estimate_coefficients(
                objective, params, self.estimator, self.evaluator, mus=mus, generator=self.generator, masks=masks
            )
        except BaseException as err:  # a failed step leaves generator and mask schedule as they were
            self.generator.set_state(gen_state)
            if sparsity_state is not None:
                self.sparsity.load_state_dict(sparsity_state)
            if isinstance(err, EvaluationError) and self.nan_policy == "skip":
                warnings.warn(f"step skipped: {err}", NonFiniteLossWarning, stacklevel=2)
                return None
            raise
        if self.inplace:
            sgd_step_(params, dirs, coeffs, [float(g["lr"]) for g in groups],
                      [float(g.get("weight_decay", 0.0)) for g in groups],
                      maximize=[bool(g.get("maximize", False)) for g in groups])
        else:
            grads = [torch.zeros_like(p) for p in params]
            dirs.accumulate(coeffs, grads)
            for p, g in zip(params, grads):
                p.grad = g
            self.base.step()
        self.zo_steps += 1
        self.num_evaluations += losses.count
        self.last_losses = losses
        return step_loss(losses)

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
        self.base.load_state_dict(sd)
        self.param_groups = self.base.param_groups
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
