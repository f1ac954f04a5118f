"""``zeroth.constrained.minimize``: scipy-shaped entry point of the constrained solvers.

``minimize`` only checks and normalises its inputs, then dispatches on ``method.lower()`` to
``_minimize_<name>``; every solver returns a :class:`scipy.optimize.OptimizeResult` whose
``status``/``message`` come from :data:`STATUS_MESSAGES`. A point that violates the
constraints is never reported as a success, and ``constr_violation`` is always filled.
"""
from __future__ import annotations

import inspect
import warnings

import numpy as np
from scipy.optimize import OptimizeResult, OptimizeWarning

from ._functions import BudgetError, Functions, NonFiniteError
from ._inputs import HESS_MODES, as_array, check_inputs, check_tol
from ._nlp import NLP
from .npasa import NPASAOptions, StopSolver, run_npasa
from .polyhedron import EmptyPolyhedronError

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

__all__ = ["minimize", "STATUS_MESSAGES"]

STATUS_MESSAGES = {
    0: "Optimization terminated successfully.",
    1: "Iteration limit reached (maxiter).",
    2: "Function evaluation limit reached (maxfev).",
    3: "The objective function or its gradient returned NaN or inf.",
    4: "The constraint functions or their Jacobian returned NaN or inf.",
    5: "The linear constraints and bounds are inconsistent: no point satisfies them.",
    6: "The nonlinear constraints could not be satisfied (locally infeasible; they may be inconsistent).",
    7: "No further progress possible before the tolerances were met.",
    8: "Stopped by the callback (StopIteration).",
}

_NPASA_OPTIONS = {"gtol", "ctol", "maxiter", "maxfev", "penalty", "theta", "disp",
                  "zo_estimator", "zo_generator", "max_phase_two_steps"}


def minimize(fun, x0, args=(), jac=None, hess=None, bounds=None, constraints=(), tol=None,
             options=None, callback=None, method="npasa"):
    """Minimise ``fun(x, *args)`` subject to bounds, linear and nonlinear constraints.

    Parameters follow :func:`scipy.optimize.minimize`. ``jac`` is a callable, ``True`` (fun returns
    (f, g)), ``None``/``"2-point"``/``"3-point"`` (finite differences) or ``"zo"`` (zeroth-order
    estimates of ∇f and of constraint Jacobians without a ``jac``, via :mod:`zeroth.estimators`).
    ``hess`` is a callable (with constraint Hessians from ``NonlinearConstraint.hess``: exact
    Newton steps), ``"2-point"`` (differences of gradients, n extra gradients per step) or
    ``"bfgs"``; ``None`` means damped BFGS of the Lagrangian. ``x0`` may be a torch tensor:
    ``fun`` then receives tensors of its dtype and device and ``result.x`` is such a tensor.

    Options (method ``"npasa"``): ``gtol`` (stationarity, relative to max(1, ‖∇f‖∞); default 1e-8
    or ``tol``), ``ctol`` (constraint violation; default 1e-8 or ``tol``), ``maxiter`` (3000),
    ``maxfev`` (objective evaluations incl. differences; 100000), ``penalty`` (initial ρ, 10),
    ``theta`` (balanced-reduction ratio, 1), ``max_phase_two_steps`` (per visit, 200),
    ``zo_estimator``/``zo_generator`` (for ``jac="zo"``; default: one-sided CGE far from a
    solution, central CGE near it).

    Returns an :class:`~scipy.optimize.OptimizeResult` with ``x, fun, success, status, message,
    nit, nfev, njev, nhev, ncev, constr_violation, multipliers`` (dict: ``eq``, ``ineq`` for the
    nonlinear equality / inequality components in the order given, ``linear`` for the rows of the
    linear constraints, ``bounds`` per variable; convention ∇f + Σ multiplier·∇constraint = 0,
    ≥ 0 where an upper side is active, ≤ 0 where a lower side is) and ``phase_history`` (one dict
    per phase-one outer iteration — ``phase`` 1, ``E_c``, ``E_m``, ``penalty`` — and per phase-two
    step — ``phase`` 2, ``step`` "constraint" | "multiplier", ``accept`` "estimators" | "merit" |
    None (rejected), ``E_c``, ``E_m`` at the new point). ``nfev`` counts every call of ``fun``
    (line searches, differences, ZO estimates, the value at the returned point), ``njev`` every
    gradient (a call of ``jac`` or one estimate).
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    solver = _SOLVERS.get(method.lower())
    if solver is None:
        raise ValueError(f"Unknown solver {method!r} (method must be one of {sorted(_SOLVERS)})")
    if not callable(fun):
        raise TypeError(f"fun must be callable, got {type(fun).__name__}")
    args = args if isinstance(args, tuple) else (args,)
    if not (callable(jac) or jac is None or jac is True or jac is False
            or (isinstance(jac, str) and jac.lower() in ("2-point", "3-point", "cs", "zo"))):
        raise ValueError(f"jac must be a callable, True, None, '2-point', '3-point' or 'zo', got {jac!r}")
    if not (hess is None or callable(hess) or (isinstance(hess, str) and hess.lower() in HESS_MODES)):
        raise ValueError(f"hess must be None, a callable or one of {HESS_MODES}, got {hess!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
    tol = check_tol(tol)
    x, spec = check_inputs(x0, bounds, constraints)
    return solver(fun, x0, x, spec, args, jac, hess, tol, dict(options), callback)


def _option(options, name, default, kind, positive=True):
    value = options.pop(name, default)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (positive and value < 1):
            raise ValueError(f"options['{name}'] must be a positive integer, got {value!r}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not np.isfinite(value) \
            or (positive and value <= 0):
        raise ValueError(f"options['{name}'] must be a finite number > 0, got {value!r}")
    return float(value)


def _wrap_callback(callback, fns):
    if callback is None:
        return None
    try:
        params = inspect.signature(callback).parameters
        new_style = list(params) == ["intermediate_result"]
    except (TypeError, ValueError):
        new_style = False

    def call(x):
        if new_style:
            out = callback(intermediate_result=OptimizeResult(x=fns.to_user(x), fun=fns.f(x)))
        else:
            out = callback(fns.to_user(x))
        if out is True:
            raise StopIteration

    return call


def _minimize_npasa(fun, x0_user, x0, spec, args, jac, hess, tol, options, callback):
    unknown = sorted(set(options) - _NPASA_OPTIONS)
    if unknown:
        warnings.warn(f"Unknown solver options: {', '.join(unknown)}", OptimizeWarning, stacklevel=3)
        for key in unknown:
            options.pop(key)
    # default tolerance 1e-8 in float64; for lower-precision tensors √ε of their dtype (what is reachable)
    low = torch is not None and isinstance(x0_user, torch.Tensor) and x0_user.dtype in (torch.float32, torch.float16,
                                                                                          torch.bfloat16)
    default_tol = (1e-8 if not low else float(torch.finfo(x0_user.dtype).eps) ** 0.5) if tol is None else tol
    opts = NPASAOptions(
        gtol=_option(options, "gtol", default_tol, float),
        ctol=_option(options, "ctol", default_tol, float),
        maxiter=_option(options, "maxiter", 3000, int),
        penalty=_option(options, "penalty", 10.0, float),
        theta=_option(options, "theta", 1.0, float),
        max_phase_two_steps=_option(options, "max_phase_two_steps", 200, int),
    )
    maxfev = _option(options, "maxfev", 100000, int)
    options.pop("disp", None)
    jac_mode = jac.lower() if isinstance(jac, str) else jac
    if jac_mode in (None, False, "cs"):
        jac_mode = "3-point" if jac_mode == "cs" else "2-point"
    fns = Functions(fun, args, jac_mode, hess, spec, x0_user, maxfev,
                    options.pop("zo_estimator", None), options.pop("zo_generator", None))
    if callable(hess) and fns.has_exact_hessian():
        opts.hess_mode = "exact"
    elif isinstance(hess, str):
        opts.hess_mode = hess.lower()
    else:
        opts.hess_mode = "bfgs"

    state = {"z": None, "nlp": None, "run": None, "x0_feasible": None}
    status = None
    try:
        fns.setup_constraints(x0)
        nlp = NLP(fns)
        state["nlp"] = nlp
        state["x0_feasible"] = nlp.violation_x(x0) <= opts.ctol
        z0 = nlp.z_from_x(x0)
        try:
            z0 = nlp.poly.project(z0)
        except EmptyPolyhedronError:
            status = 5
            state["z"] = z0
        if status is None:
            state["z"] = z0
            z, lam, status, run = run_npasa(nlp, z0, opts, _wrap_callback(callback, fns))
            state["z"], state["lam"], state["run"] = z, lam, run
    except (StopSolver, BudgetError, NonFiniteError, StopIteration) as exc:
        run = getattr(exc, "run", None)
        state["run"] = run
        if isinstance(exc, StopSolver):
            status = exc.status
        elif isinstance(exc, BudgetError):
            status = 2
        elif isinstance(exc, StopIteration):
            status = 8
        else:
            status = 3 if exc.which in ("fun", "jac") else 4
        if run is not None:
            state["z"], state["lam"] = (run.best[1], run.best[2]) if run.best is not None else (run.z, run.lam)
        if state["z"] is None:
            state["z"] = np.concatenate([x0, np.zeros(state["nlp"].ns)]) if state["nlp"] is not None else x0
    return _result(fns, state, status, opts)


def _result(fns, state, status, opts):
    nlp, run = state["nlp"], state["run"]
    z = state["z"]
    x = z[: fns.n]
    fval, viol = np.nan, np.nan
    multipliers = {"eq": np.zeros(0), "ineq": np.zeros(0), "linear": np.zeros(fns.spec.A.shape[0]),
                   "bounds": np.zeros(fns.n)}
    saved = fns.maxfev
    fns.maxfev = fns.nfev + 1  # one more evaluation to report f at the returned point
    try:
        fval = fns.f(x)
    except (NonFiniteError, BudgetError):
        pass
    fns.maxfev = saved
    if nlp is not None:
        try:
            viol = nlp.violation_x(x)
        except NonFiniteError:
            viol = np.inf
        lam = state.get("lam")
        if lam is not None and fns.m:
            v = nlp.c_multipliers(lam)
            multipliers["eq"], multipliers["ineq"] = v[nlp.eq_idx], v[nlp.in_idx]
        if lam is not None and status != 5:
            try:
                gL = nlp.grad_lagrangian(z, lam)
                _, wA, wb = nlp.poly.project(z - gL, with_multipliers=True)
                multipliers["linear"], multipliers["bounds"] = wA, wb[: fns.n]
            except (NonFiniteError, Exception):
                pass
    else:
        viol = float(np.max(np.maximum(fns.spec.lb - x, x - fns.spec.ub), initial=0.0))
    if status == 0 and not (viol <= max(opts.ctol, 1e-12) * 10):
        status = 6  # never call an infeasible point a success
    message = STATUS_MESSAGES[status]
    if state.get("x0_feasible") is False and status == 0:
        message += " (x0 violated the constraints; a feasible point was found.)"
    x_out = fns.to_user(x)
    return OptimizeResult(
        x=x_out, fun=fval, success=status == 0, status=status, message=message,
        nit=run.nit if run is not None else 0, nfev=fns.nfev, njev=fns.njev, nhev=fns.nhev,
        ncev=fns.ncev, ncjev=fns.ncjev, constr_violation=viol, multipliers=multipliers,
        phase_history=list(run.history) if run is not None else [],
        x0_feasible=state.get("x0_feasible"), method="npasa",
    )


_SOLVERS = {"npasa": _minimize_npasa}
