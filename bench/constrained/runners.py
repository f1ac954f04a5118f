"""One function per solver: run it on a problem and return (f, x, nfev, njev, seconds).

Every runner counts objective and gradient calls itself (wrapping ``fun``/``jac``), so nfev and
njev mean the same thing for all solvers: calls of the objective and of its gradient, whatever
the solver calls them for. Constraint evaluations are not counted for any solver.

trust-constr starts its barrier at 1e-8: from scipy's default (0.1) it stops with ``gtol``
met while f is still ~1e-5 off on about a third of the HS problems (42/62 solved instead of 56).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from scipy.optimize import minimize as scipy_minimize

from zeroth.constrained import minimize as npasa_minimize


class Counted:
    """Counts the calls of a function."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, *args):
        self.calls += 1
        return self.fn(x)


def _run(solve, p):
    fun, grad = Counted(p.fun), Counted(p.grad)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = solve(p, fun, grad)
            x = np.asarray(res.x, dtype=float)
            f = p.fun(x)
        except Exception:  # a solver crash counts as a failure, with what was spent
            x, f = p.x0, np.nan
    return f, x, fun.calls, grad.calls, time.perf_counter() - start


def budget(p):
    """Objective-evaluation budget of the derivative-free runs (same for all of them)."""
    return min(300 * (p.n + 1), 6000)


SOLVERS = {
    "NPASA": lambda p: _run(
        lambda p, f, g: npasa_minimize(f, p.x0, jac=g, bounds=p.bounds(), constraints=p.constraints()), p
    ),
    "NPASA-zo": lambda p: _run(
        lambda p, f, g: npasa_minimize(
            f,
            p.x0,
            jac="zo",
            bounds=p.bounds(),
            constraints=p.constraints(derivatives=False),
            options={"maxfev": budget(p)},
        ),
        p,
    ),
    "SLSQP": lambda p: _run(
        lambda p, f, g: scipy_minimize(
            f,
            p.x0,
            jac=g,
            bounds=p.bounds(),
            constraints=p.constraints_dict(),
            method="SLSQP",
            options={"maxiter": 1000, "ftol": 1e-12},
        ),
        p,
    ),
    "trust-constr": lambda p: _run(
        lambda p, f, g: scipy_minimize(
            f,
            p.x0,
            jac=g,
            hess=p.hess,
            bounds=p.bounds(),
            constraints=p.constraints(),
            method="trust-constr",
            options={
                "maxiter": 1000,
                "gtol": 1e-12,
                "xtol": 1e-14,
                "initial_barrier_parameter": 1e-8,
                "initial_barrier_tolerance": 1e-8,
            },
        ),
        p,
    ),
    "COBYLA": lambda p: _run(
        lambda p, f, g: scipy_minimize(
            f,
            p.x0,
            bounds=p.bounds(),
            constraints=p.constraints_dict(derivatives=False),
            method="COBYLA",
            options={"maxiter": budget(p), "tol": 1e-10},
        ),
        p,
    ),
    "COBYQA": lambda p: _run(
        lambda p, f, g: scipy_minimize(
            f,
            p.x0,
            bounds=p.bounds(),
            constraints=p.constraints(derivatives=False),
            method="COBYQA",
            options={"maxfev": budget(p), "final_tr_radius": 1e-10},
        ),
        p,
    ),
}
