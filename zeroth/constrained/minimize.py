"""``zeroth.constrained.minimize``: scipy-shaped entry point of the constrained solvers.

``minimize`` only checks and normalises its inputs, then dispatches on ``method.lower()`` to
``_minimize_<name>``; every solver returns a :class:`scipy.optimize.OptimizeResult` whose
``status``/``message`` come from :data:`STATUS_MESSAGES` — one status per cause:

====== ==================================================================================
status cause
====== ==================================================================================
0      converged: stationarity ≤ gtol·max(1, ‖∇f‖∞), violation ≤ ctol, f finite
1      iteration limit (``maxiter``)
2      objective-evaluation limit (``maxfev``)
3      the objective or its gradient returned NaN/inf (at an iterate, or at trial points
       that then blocked all progress)
4      the constraints or their Jacobian returned NaN/inf (same rule)
5      the linear constraints and bounds are inconsistent (no function was called)
6      the nonlinear constraints could not be satisfied (locally infeasible)
7      no further progress before the tolerances were met
8      stopped by the callback (``StopIteration``, or a callback returning True)
9      the iterates diverge (‖x‖∞ > 1e20): the problem may be unbounded
====== ==================================================================================

``success`` is ``status == 0``, and status 0 is never reported with a non-finite ``fun``, a
violation above 10·ctol or a diverging iterate. On any other stop ``x`` is the best iterate by
(max(violation, ctol), f), compared lexicographically.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import torch
from scipy.optimize import OptimizeResult, OptimizeWarning

from ..errors import ZerothWarning
from ._functions import BudgetError, Functions, NonFiniteError
from ._inputs import HESS_MODES, check_inputs, check_tol
from ._nlp import NLP
from .npasa import NPASAOptions, Run, StopSolver, run_npasa
from .polyhedron import EmptyPolyhedronError, Polyhedron

__all__ = ["minimize", "STATUS_MESSAGES", "SolverOptionWarning"]


class SolverOptionWarning(ZerothWarning, OptimizeWarning):
    """An option the method does not use was passed (an unknown ``options`` key, or ``hessp``
    to a method without Hessian-vector products); it is ignored.

    Both a :class:`~zeroth.errors.ZerothWarning` (one filter on ``ZerothWarning`` catches every
    zeroth warning) and a :class:`scipy.optimize.OptimizeWarning` (what scipy's ``minimize``
    issues in the same cases, so existing scipy filters keep working).
    """


STATUS_MESSAGES = {
    0: "Optimization terminated successfully.",
    1: "Iteration limit reached (maxiter).",
    2: "Function evaluation limit reached (maxfev).",
    3: "The objective function or its gradient returned NaN or inf.",
    4: "The constraint functions or their Jacobian returned NaN or inf.",
    5: "The linear constraints and bounds are inconsistent: no point satisfies them.",
    6: "The nonlinear constraints could not be satisfied (locally infeasible; they may be inconsistent).",
    7: "No further progress possible before the tolerances were met.",
    8: "Stopped by the callback.",
    9: "The iterates diverge (|x| > 1e20): the problem may be unbounded.",
}

_NPASA_OPTIONS = {
    "gtol",
    "ctol",
    "maxiter",
    "maxfev",
    "penalty",
    "theta",
    "disp",
    "zo_estimator",
    "zo_generator",
    "max_phase_two_steps",
}


def minimize(
    fun,
    x0,
    args=(),
    method="npasa",
    jac=None,
    hess=None,
    hessp=None,
    bounds=None,
    constraints=(),
    tol=None,
    callback=None,
    options=None,
):
    """Minimise ``fun(x, *args)`` subject to bounds, linear and nonlinear constraints.

    The signature and argument forms are those of :func:`scipy.optimize.minimize` (same order).
    ``x0``: (n,) array-like or torch tensor (``fun`` then receives tensors of its dtype and device
    and ``result.x`` is such a tensor). ``jac``: a callable, ``True`` (fun returns (f, g)),
    ``None``/``"2-point"``/``"3-point"``/``"cs"`` (scipy's finite differences / complex step,
    ``approx_derivative``) or ``"zo"`` (zeroth-order estimates of ∇f and of constraint Jacobians
    without a ``jac``, via :mod:`zeroth.estimators`). ``hess``: a callable (with constraint
    Hessians from ``NonlinearConstraint.hess``: exact Newton steps; dense or scipy sparse),
    ``"2-point"`` (differences of gradients) or ``"bfgs"``; ``None`` means scipy's damped BFGS of
    the Lagrangian. ``hessp`` is not used by npasa (a :class:`SolverOptionWarning`, also an
    ``OptimizeWarning`` as from scipy's methods that ignore it). ``bounds``: ``Bounds`` or
    (min, max) pairs; ``constraints``:
    ``LinearConstraint`` (``A`` dense or sparse), ``NonlinearConstraint`` (``jac`` may return
    sparse) or dicts, alone or in a sequence. ``tol``: default for ``gtol`` and ``ctol``.
    No function is ever evaluated outside the bounds: ``x0`` is first projected onto the
    bounds and linear constraints, and derivative approximations step inwards and never move a
    fixed variable (``lb == ub``).

    Options (method ``"npasa"``; unknown ones warn with :class:`SolverOptionWarning`): ``gtol``
    (stationarity, relative to max(1, ‖∇f‖∞); default 1e-8 or ``tol``), ``ctol`` (constraint
    violation; default 1e-8 or ``tol``), ``maxiter`` (3000), ``maxfev`` (objective evaluations incl.
    differences; 100000), ``penalty`` (initial ρ, 10), ``theta`` (balanced-reduction ratio, 1),
    ``max_phase_two_steps`` (per visit, 200), ``zo_estimator``/``zo_generator`` (for
    ``jac="zo"``; default: one-sided CGE far from a solution, central CGE near it), ``disp``
    (accepted, ignored).

    Returns an :class:`~scipy.optimize.OptimizeResult` with ``x, fun, success, status, message,
    nit, nfev, njev, nhev, ncev, ncjev, constr_violation, multipliers, phase_history,
    x0_feasible`` (see the module's status table). ``multipliers``: dict with ``eq``, ``ineq``
    (nonlinear equality / inequality components in the order given), ``linear`` (rows of the
    linear constraints), ``bounds`` (per variable); convention ∇f + Σ multiplier·∇constraint = 0,
    ≥ 0 where an upper side is active, ≤ 0 where a lower side is. ``phase_history``: one dict per
    phase-one outer iteration (``phase`` 1, ``E_c``, ``E_m``, ``penalty``) and per phase-two step
    (``phase`` 2, ``step`` "constraint" | "multiplier", ``accept`` "estimators" | "merit" | None,
    ``E_c``, ``E_m`` at the new point; on the sparse path ``E_m`` is None where no decision
    needed it and its projection was skipped). ``nfev`` counts every call of ``fun`` (line
    searches, differences, ZO estimates, the value at the returned point), ``njev`` every gradient.

    Raises TypeError/ValueError naming the argument for malformed input, before any evaluation.
    Method: Diffenderfer & Hager, NPASA (arXiv:2107.07479, 2107.07478); see :mod:`.npasa`.
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    solver = _SOLVERS.get(method.lower())
    if solver is None:
        raise ValueError(f"Unknown solver {method!r} (method must be one of {sorted(_SOLVERS)})")
    if not callable(fun):
        raise TypeError(f"fun must be callable, got {type(fun).__name__}")
    args = args if isinstance(args, tuple) else (args,)
    if not (
        callable(jac)
        or jac is None
        or jac is True
        or jac is False
        or (isinstance(jac, str) and jac.lower() in ("2-point", "3-point", "cs", "zo"))
    ):
        raise ValueError(f"jac must be a callable, True, None, '2-point', '3-point', 'cs' or 'zo', got {jac!r}")
    if not (hess is None or callable(hess) or (isinstance(hess, str) and hess.lower() in HESS_MODES)):
        raise ValueError(f"hess must be None, a callable or one of {HESS_MODES}, got {hess!r}")
    if hessp is not None and not callable(hessp):
        raise TypeError(f"hessp must be callable, got {type(hessp).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
    tol = check_tol(tol)
    x, spec = check_inputs(x0, bounds, constraints)
    if (
        (jac == "cs" or any(p.jac == "cs" for p in spec.nonlinear))
        and torch is not None
        and isinstance(x0, torch.Tensor)
    ):
        raise ValueError("jac='cs' (complex step) needs x0 as a numpy array, not a torch tensor")
    return solver(fun, x0, x, spec, args, jac, hess, hessp, tol, dict(options), callback)


def _option(options, name, default, kind, positive=True):
    value = options.pop(name, default)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (positive and value < 1):
            raise ValueError(f"options['{name}'] must be a positive integer, got {value!r}")
        return int(value)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.floating))
        or not np.isfinite(value)
        or (positive and value <= 0)
    ):
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


def _minimize_npasa(fun, x0_user, x0, spec, args, jac, hess, hessp, tol, options, callback):
    unknown = sorted(set(options) - _NPASA_OPTIONS)
    if unknown:
        warnings.warn(f"Unknown solver options: {', '.join(unknown)}", SolverOptionWarning, stacklevel=3)
        for key in unknown:
            options.pop(key)
    if hessp is not None:
        warnings.warn(
            "Method npasa does not use Hessian-vector product information (hessp).",
            SolverOptionWarning,
            stacklevel=3,
        )
    # default tolerance 1e-8 in float64; for lower-precision tensors √ε of their dtype (what is reachable)
    low = (
        torch is not None
        and isinstance(x0_user, torch.Tensor)
        and x0_user.dtype in (torch.float32, torch.float16, torch.bfloat16)
    )
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
    if jac_mode in (None, False):
        jac_mode = "2-point"
    fns = Functions(
        fun,
        args,
        jac_mode,
        hess,
        spec,
        x0_user,
        maxfev,
        options.pop("zo_estimator", None),
        options.pop("zo_generator", None),
    )
    if callable(hess) and fns.has_exact_hessian():
        opts.hess_mode = "exact"
    elif isinstance(hess, str):
        opts.hess_mode = hess.lower()
    else:
        opts.hess_mode = "bfgs"

    # x0 onto the bounds and linear constraints first: no function is called outside them
    x_poly = Polyhedron(spec.lb, spec.ub, spec.A, spec.al, spec.au)
    try:
        x = x_poly.project(x0)
    except EmptyPolyhedronError:
        return _result(fns, None, None, np.clip(x0, spec.lb, spec.ub), None, 5, opts, x0_feasible=False)
    x0_inside = bool(np.max(np.abs(x - x0), initial=0.0) <= opts.ctol * (1.0 + np.max(np.abs(x0))))
    run, nlp, status, z, lam = None, None, None, None, None
    try:
        fns.setup_constraints(x)
        nlp = NLP(fns)
        x0_feasible = x0_inside and nlp.violation_x(x) <= opts.ctol
        z0 = nlp.poly.project(nlp.z_from_x(x))
        run = Run(nlp, opts, _wrap_callback(callback, fns))
        z, lam, status = run_npasa(run, z0)
    except StopSolver as exc:
        status = exc.status
    except BudgetError:
        status = 2
    except StopIteration:
        status = 8
    except NonFiniteError as exc:
        status = exc.status
    if nlp is None:  # the constraints were NaN/inf at the projected x0
        return _result(fns, None, None, x, None, status, opts, x0_feasible=False)
    if status != 0:
        if status == 7 and run is not None and run.nonfinite is not None:
            status = run.nonfinite.status  # progress was blocked by NaN/inf values
        if run is not None and run.best is not None:
            z, lam = run.best[1], run.best[2]
        elif run is not None and run.z is not None:
            z, lam = run.z, run.lam
        else:
            z, lam = nlp.with_best_slacks(np.concatenate([x, np.zeros(nlp.ns)])), None
    assert z is not None  # status 0 means run_npasa returned its z
    return _result(fns, nlp, run, z[: fns.n], (z, lam), status, opts, x0_feasible=x0_feasible)


def _result(fns, nlp, run, x, zl, status, opts, x0_feasible):
    fval = np.nan
    multipliers = {
        "eq": np.zeros(0),
        "ineq": np.zeros(0),
        "linear": np.zeros(fns.spec.A.shape[0]),
        "bounds": np.zeros(fns.n),
    }
    if status != 5:
        saved = fns.maxfev
        fns.maxfev = fns.nfev + 1  # one more evaluation to report f at the returned point
        try:
            fval = fns.f(x)
        except NonFiniteError:
            fval = np.nan
            status = 3 if status == 0 else status
        except BudgetError:
            pass
        fns.maxfev = saved
    viol = float(np.max(np.maximum(fns.spec.lb - x, x - fns.spec.ub), initial=0.0))
    if fns.spec.A.shape[0]:
        Ax = fns.spec.A @ x
        viol = max(viol, float(np.max(np.maximum(fns.spec.al - Ax, Ax - fns.spec.au), initial=0.0)))
    if fns.parts:
        if nlp is None:
            viol = np.inf if status == 4 else viol
        else:
            try:
                viol = nlp.violation_x(x)
            except NonFiniteError:
                viol = np.inf
    if nlp is not None and zl is not None and zl[1] is not None and status not in (3, 4):
        z, lam = zl
        if fns.m:
            v = nlp.c_multipliers(lam)
            multipliers["eq"], multipliers["ineq"] = v[nlp.eq_idx], v[nlp.in_idx]
        try:
            gL = nlp.grad_lagrangian(z, lam)
            _, wA, wb = nlp.poly.project(z - gL, with_multipliers=True)
            multipliers["linear"], multipliers["bounds"] = wA, wb[: fns.n]
        except (NonFiniteError, BudgetError):
            pass
    if status == 0 and not np.isfinite(fval):
        status = 3
    if status == 0 and not (viol <= max(opts.ctol, 1e-12) * 10):
        status = 6  # never call an infeasible point a success
    if status == 0 and not float(np.max(np.abs(x))) <= 1e20:
        status = 9
    message = STATUS_MESSAGES[status]
    if x0_feasible is False and status == 0:
        message += " (x0 violated the constraints; a feasible point was found.)"
    return OptimizeResult(
        x=fns.to_user(x),
        fun=fval,
        success=status == 0,
        status=status,
        message=message,
        nit=run.nit if run is not None else 0,
        nfev=fns.nfev,
        njev=fns.njev,
        nhev=fns.nhev,
        ncev=fns.ncev,
        ncjev=fns.ncjev,
        constr_violation=viol,
        multipliers=multipliers,
        phase_history=list(run.history) if run is not None else [],
        x0_feasible=x0_feasible,
        method="npasa",
    )


_SOLVERS = {"npasa": _minimize_npasa}
