"""scipy-style constrained problems, written from their published definitions (the problem
classes of scipy's ``test_minimize_constrained.py`` describe the same ones): Maratos, HyperbolicIneq,
Rosenbrock with bounds / linear inequality / linear equality + inequality / a nonlinear equality,
and Elec (Thomson's problem: ne points on the unit sphere minimising Σ 1/‖pᵢ − pⱼ‖; Dolan, Moré &
Munson, COPS 3.0) for ne = 5, 10, 20, with its constraint Jacobian returned as a sparse
``csc_array`` (ne = 34 is left out: from this seeded start SLSQP, trust-constr and NPASA all stop
at local minima above the published energy).

Reference optima are independent of the solvers compared: closed forms, a one-dimensional
reduction solved exactly (roots of a polynomial, or a scalar root on the active constraint), or
for Elec the published Thomson energies (Wales & Ulker, Phys. Rev. B 74, 212101, 2006).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, NonlinearConstraint, brentq

__all__ = ["scipy_style_problems"]


class ScipyStyle:
    """min f s.t. bounds, linear rows (A, lo, hi), nonlinear c with (cl, cu); the interface the
    runners of :mod:`bench.constrained.runners` use."""

    def __init__(
        self,
        name,
        x0,
        f_opt,
        f,
        g,
        H,
        lb=None,
        ub=None,
        A=None,
        alo=None,
        ahi=None,
        c=None,
        cj=None,
        ch=None,
        cl=None,
        cu=None,
        kind="",
    ):
        self.name, self.x0, self.f_opt = name, np.asarray(x0, float), float(f_opt)
        self.n = self.x0.size
        self.fun, self.grad, self.hess = f, g, H
        self.lb, self.ub, self.A, self.alo, self.ahi = lb, ub, A, alo, ahi
        self.c, self.cj, self.ch, self.cl, self.cu = c, cj, ch, cl, cu
        self.kind = kind

    def bounds(self):
        if self.lb is None and self.ub is None:
            return None
        return Bounds(-np.inf if self.lb is None else self.lb, np.inf if self.ub is None else self.ub)

    def constraints(self, derivatives=True):
        out = []
        if self.A is not None:
            out.append(LinearConstraint(self.A, self.alo, self.ahi))
        if self.c is not None:
            if derivatives:
                out.append(NonlinearConstraint(self.c, self.cl, self.cu, jac=self.cj, hess=self.ch))
            else:
                out.append(NonlinearConstraint(self.c, self.cl, self.cu))
        return out

    def constraints_dict(self, derivatives=True):
        rows = []
        if self.A is not None:
            A = np.atleast_2d(np.asarray(self.A, float))
            for i in range(A.shape[0]):
                rows += _dict_rows(
                    lambda x, a=A[i]: np.array([a @ x]),
                    lambda x, a=A[i]: a[None],
                    np.atleast_1d(self.alo)[i],
                    np.atleast_1d(self.ahi)[i],
                )
        if self.c is not None:
            m = np.size(self.cl)
            dense = lambda x: (lambda J: J.toarray() if sp.issparse(J) else np.atleast_2d(J))(self.cj(x))
            if m == 1 or np.all(np.broadcast_to(self.cl, (m,)) == np.broadcast_to(self.cu, (m,))):
                rows += _dict_rows(
                    self.c, dense, np.broadcast_to(self.cl, (m,)), np.broadcast_to(self.cu, (m,)), vector=True
                )
            else:  # pragma: no cover - not used by these problems
                raise NotImplementedError
        if not derivatives:
            rows = [{k: v for k, v in r.items() if k != "jac"} for r in rows]
        return rows

    def violation(self, x):
        x = np.asarray(x, float)
        v = 0.0
        if self.lb is not None:
            v = max(v, float(np.max(self.lb - x)))
        if self.ub is not None:
            v = max(v, float(np.max(x - self.ub)))
        if self.A is not None:
            Ax = np.atleast_2d(np.asarray(self.A, float)) @ x
            v = max(v, float(np.max(np.maximum(self.alo - Ax, Ax - self.ahi))))
        if self.c is not None:
            cx = np.atleast_1d(self.c(x))
            v = max(v, float(np.max(np.maximum(self.cl - cx, cx - self.cu))))
        return max(v, 0.0)

    def solved(self, f, x, ftol=1e-6, ctol=1e-6):
        return bool(
            np.isfinite(f) and abs(f - self.f_opt) <= ftol * max(1.0, abs(self.f_opt)) and self.violation(x) <= ctol
        )


def _dict_rows(fun, jac, lo, hi, vector=False):
    lo, hi = np.atleast_1d(lo), np.atleast_1d(hi)
    if vector and np.all(lo == hi):
        return [{"type": "eq", "fun": lambda x: np.atleast_1d(fun(x)) - lo, "jac": jac}]
    out = []
    if np.all(np.isfinite(lo)) and np.all(lo == hi):
        return [{"type": "eq", "fun": lambda x: np.atleast_1d(fun(x)) - lo, "jac": jac}]
    if np.all(np.isfinite(lo)):
        out.append({"type": "ineq", "fun": lambda x: np.atleast_1d(fun(x)) - lo, "jac": jac})
    if np.all(np.isfinite(hi)):
        out.append({"type": "ineq", "fun": lambda x: hi - np.atleast_1d(fun(x)), "jac": lambda x: -jac(x)})
    return out


def _rosen(x):
    return 100.0 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2


def _rosen_g(x):
    return np.array([-400.0 * x[0] * (x[1] - x[0] ** 2) - 2 * (1 - x[0]), 200.0 * (x[1] - x[0] ** 2)])


def _rosen_h(x):
    return np.array([[1200.0 * x[0] ** 2 - 400.0 * x[1] + 2, -400.0 * x[0]], [-400.0 * x[0], 200.0]])


def _min_on_line(p, q, lo=-np.inf, hi=np.inf):
    """min of Rosenbrock on x = p + t q, t ∈ [lo, hi]: f(p + tq) is a quartic in t, its minimiser a
    real root of the cubic derivative or an end point (exact up to rounding)."""
    ts = np.linspace(-1, 1, 5)
    coef = np.polyfit(ts, [_rosen(p + t * q) for t in ts], 4)
    cands = [r.real for r in np.roots(np.polyder(coef)) if abs(r.imag) < 1e-9 and lo <= r.real <= hi]
    cands += [t for t in (lo, hi) if np.isfinite(t)]
    return min(_rosen(p + t * q) for t in cands)


def _rosenbrocks():
    x0 = [-1.2, 1.0]
    out = [ScipyStyle("Rosenbrock", x0, 0.0, _rosen, _rosen_g, _rosen_h, kind="unconstrained")]
    # bounds x ≤ 0.5: min (1 − x0)² with x1 = x0² at x0 = 0.5 → 0.25
    out.append(
        ScipyStyle(
            "BoundedRosenbrock",
            x0,
            0.25,
            _rosen,
            _rosen_g,
            _rosen_h,
            lb=np.array([-2.0, -2.0]),
            ub=np.array([0.5, 0.5]),
            kind="bounds",
        )
    )
    # x0 + 2 x1 ≤ 1 (active: the unconstrained minimiser (1, 1) violates it)
    f_ineq = _min_on_line(np.array([1.0, 0.0]), np.array([-2.0, 1.0]))
    out.append(
        ScipyStyle(
            "IneqRosenbrock",
            x0,
            f_ineq,
            _rosen,
            _rosen_g,
            _rosen_h,
            A=np.array([[1.0, 2.0]]),
            alo=np.array([-np.inf]),
            ahi=np.array([1.0]),
            kind="linear-ineq",
        )
    )
    # 2 x0 + x1 = 1 and x0 + 2 x1 ≤ 1: on x = (t, 1 − 2t) the inequality is t ≥ 1/3
    f_eqineq = _min_on_line(np.array([0.0, 1.0]), np.array([1.0, -2.0]), lo=1.0 / 3.0)
    out.append(
        ScipyStyle(
            "EqIneqRosenbrock",
            x0,
            f_eqineq,
            _rosen,
            _rosen_g,
            _rosen_h,
            A=np.array([[2.0, 1.0], [1.0, 2.0]]),
            alo=np.array([1.0, -np.inf]),
            ahi=np.array([1.0, 1.0]),
            kind="linear-eq+ineq",
        )
    )
    # nonlinear equality x0² + x1² = 1/2: x = r(cos θ, sin θ); the global minimiser from a fine grid
    # in θ refined by a root of df/dθ (start in its basin: from (−1.2, 1) every solver compared stops
    # at the local minimiser near (−0.60, 0.37), f = 2.5729)
    r = np.sqrt(0.5)
    phi = lambda th: _rosen(r * np.array([np.cos(th), np.sin(th)]))
    dphi = lambda th: _rosen_g(r * np.array([np.cos(th), np.sin(th)])) @ (r * np.array([-np.sin(th), np.cos(th)]))
    grid = np.linspace(0, 2 * np.pi, 20001)
    k = int(np.argmin([phi(t) for t in grid]))
    th = brentq(dphi, grid[k - 1], grid[k + 1])
    out.append(
        ScipyStyle(
            "CircleRosenbrock",
            [0.7, 0.0],
            phi(th),
            _rosen,
            _rosen_g,
            _rosen_h,
            c=lambda x: np.array([x @ x]),
            cj=lambda x: 2 * x[None, :],
            ch=lambda x, v: 2 * v[0] * np.eye(2),
            cl=0.5,
            cu=0.5,
            kind="nl-eq",
        )
    )
    return out


def _maratos():
    # Maratos (Nocedal & Wright example 15.4, scipy's Maratos(degrees=60)): x* = (1, 0), f* = −1
    th = np.radians(60)
    return ScipyStyle(
        "Maratos",
        [np.cos(th), np.sin(th)],
        -1.0,
        lambda x: 2 * (x[0] ** 2 + x[1] ** 2 - 1) - x[0],
        lambda x: np.array([4 * x[0] - 1, 4 * x[1]]),
        lambda x: 4 * np.eye(2),
        c=lambda x: np.array([x[0] ** 2 + x[1] ** 2]),
        cj=lambda x: 2 * x[None, :],
        ch=lambda x, v: 2 * v[0] * np.eye(2),
        cl=1.0,
        cu=1.0,
        kind="nl-eq",
    )


def _hyperbolic_ineq():
    # min ½(x0 − 2)² + ½(x1 − ½)²  s.t.  1/(x0 + 1) − x1 ≥ ¼, x ≥ 0; the constraint is active, so
    # x1 = 1/(x0 + 1) − ¼ and x0 solves the scalar stationarity equation
    f = lambda x: 0.5 * (x[0] - 2) ** 2 + 0.5 * (x[1] - 0.5) ** 2
    x1 = lambda t: 1 / (t + 1) - 0.25
    t = brentq(lambda t: (t - 2) + (x1(t) - 0.5) * (-1 / (t + 1) ** 2), 0.0, 3.0)
    return ScipyStyle(
        "HyperbolicIneq",
        [0.0, 0.0],
        f([t, x1(t)]),
        f,
        lambda x: np.array([x[0] - 2, x[1] - 0.5]),
        lambda x: np.eye(2),
        lb=np.zeros(2),
        c=lambda x: np.array([1 / (x[0] + 1) - x[1]]),
        cj=lambda x: np.array([[-1 / (x[0] + 1) ** 2, -1.0]]),
        ch=lambda x, v: v[0] * np.array([[2 / (x[0] + 1) ** 3, 0.0], [0.0, 0.0]]),
        cl=0.25,
        cu=np.inf,
        kind="bounds+nl-ineq",
    )


THOMSON = {5: 6.474691495, 10: 32.716949460, 20: 150.881568334}


def _elec(ne, seed=0):
    rng = np.random.default_rng(seed)
    phi, theta = rng.uniform(0, 2 * np.pi, ne), rng.uniform(0, np.pi, ne)
    x0 = np.column_stack([np.cos(phi) * np.sin(theta), np.sin(phi) * np.sin(theta), np.cos(theta)]).ravel()
    iu = np.triu_indices(ne, 1)

    def f(x):
        p = x.reshape(ne, 3)
        d = np.linalg.norm(p[:, None] - p[None], axis=2)[iu]
        return float(np.sum(1.0 / d))

    def g(x):
        p = x.reshape(ne, 3)
        diff = p[:, None] - p[None]
        d3 = np.linalg.norm(diff, axis=2) ** 3
        np.fill_diagonal(d3, np.inf)
        return (-np.sum(diff / d3[:, :, None], axis=1)).ravel()

    def H(x):
        p = x.reshape(ne, 3)
        out = np.zeros((3 * ne, 3 * ne))
        for i in range(ne):
            for j in range(ne):
                if i == j:
                    continue
                r = p[i] - p[j]
                d = np.linalg.norm(r)
                B = -np.eye(3) / d**3 + 3 * np.outer(r, r) / d**5
                out[3 * i : 3 * i + 3, 3 * i : 3 * i + 3] += B
                out[3 * i : 3 * i + 3, 3 * j : 3 * j + 3] -= B
        return out

    c = lambda x: np.sum(x.reshape(ne, 3) ** 2, axis=1)
    rows = np.repeat(np.arange(ne), 3)

    def cj(x):
        return sp.csc_array((2 * x, (rows, np.arange(3 * ne))), shape=(ne, 3 * ne))

    ch = lambda x, v: sp.diags_array(2 * np.repeat(v, 3), format="csr")
    return ScipyStyle(
        f"Elec{ne}",
        x0,
        THOMSON[ne],
        f,
        g,
        H,
        c=c,
        cj=cj,
        ch=ch,
        cl=np.ones(ne),
        cu=np.ones(ne),
        kind="nl-eq (sparse jac)",
    )


def scipy_style_problems():
    return [_maratos(), _hyperbolic_ineq()] + _rosenbrocks() + [_elec(ne) for ne in (5, 10, 20)]
