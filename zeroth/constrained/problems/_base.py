"""A test problem record: x0, known optimum, fun/grad/hess and constraints in scipy's forms.

Objectives and constraints are written once with torch operations; gradients, Jacobians and
Hessians come from autograd (exact), so every form below is consistent by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import numpy.typing as npt
import torch
from scipy.optimize import Bounds, LinearConstraint, NonlinearConstraint

__all__ = ["Problem"]


def _t(x):
    return torch.as_tensor(np.asarray(x, dtype=float), dtype=torch.float64)


@dataclass
class Problem:
    """min f(x) s.t. lb ≤ x ≤ ub, lin_lb ≤ A x ≤ lin_ub, nl_lb ≤ c(x) ≤ nl_ub.

    ``f``/``c`` take a float64 torch tensor; ``c`` returns a 1-D tensor (or None: no nonlinear part).
    """

    name: str
    x0: Any  # Sequence[float], an array after __post_init__
    f_opt: float
    f: Callable
    lb: Optional[npt.ArrayLike] = None
    ub: Optional[npt.ArrayLike] = None
    c: Optional[Callable] = None
    nl_lb: Any = ()  # Sequence[float], an array after __post_init__
    nl_ub: Any = ()  # Sequence[float], an array after __post_init__
    A: Optional[npt.ArrayLike] = None  # (m, n)
    lin_lb: Any = ()  # Sequence[float], an array after __post_init__
    lin_ub: Any = ()  # Sequence[float], an array after __post_init__
    x_opt: Any = None  # Optional[Sequence[float]], an array after __post_init__
    kind: str = field(default="")

    def __post_init__(self):
        self.x0 = np.asarray(self.x0, dtype=float)
        self.n = self.x0.size
        self.nl_lb = np.asarray(self.nl_lb, dtype=float)
        self.nl_ub = np.asarray(self.nl_ub, dtype=float)
        self.lin_lb = np.asarray(self.lin_lb, dtype=float)
        self.lin_ub = np.asarray(self.lin_ub, dtype=float)
        if self.x_opt is not None:
            self.x_opt = np.asarray(self.x_opt, dtype=float)
        if not self.kind:
            parts = []
            if self.lb is not None or self.ub is not None:
                parts.append("bounds")
            if self.A is not None:
                parts.append("linear")
            if self.c is not None:
                eq = np.isclose(self.nl_lb, self.nl_ub)
                if eq.any():
                    parts.append("nl-eq")
                if (~eq).any():
                    parts.append("nl-ineq")
            self.kind = "+".join(parts) or "unconstrained"

    # --- objective ----------------------------------------------------------------------
    def fun(self, x):
        return float(self.f(_t(x)))

    def grad(self, x):
        xt = _t(x).requires_grad_(True)
        (g,) = torch.autograd.grad(self.f(xt), xt)
        return g.numpy()

    def hess(self, x):
        return torch.autograd.functional.hessian(self.f, _t(x)).numpy()

    # --- constraints ----------------------------------------------------------------------
    def cons(self, x):
        assert self.c is not None  # called only for a problem with a nonlinear part
        return self.c(_t(x)).detach().numpy()

    def cons_jac(self, x):
        return torch.autograd.functional.jacobian(self.c, _t(x)).numpy().reshape(-1, self.n)

    def cons_hess(self, x, v):
        c = self.c
        assert c is not None  # called only for a problem with a nonlinear part
        vt = _t(v)
        return torch.autograd.functional.hessian(lambda y: c(y) @ vt, _t(x)).numpy()

    def bounds(self):
        if self.lb is None and self.ub is None:
            return None
        lb = np.full(self.n, -np.inf) if self.lb is None else np.asarray(self.lb, dtype=float)
        ub = np.full(self.n, np.inf) if self.ub is None else np.asarray(self.ub, dtype=float)
        return Bounds(lb, ub)

    def constraints(self, derivatives: bool = True):
        """scipy objects: a LinearConstraint and a NonlinearConstraint (with jac/hess if ``derivatives``)."""
        out = []
        if self.A is not None:
            out.append(LinearConstraint(np.asarray(self.A, dtype=float), self.lin_lb, self.lin_ub))
        if self.c is not None:
            if derivatives:
                out.append(
                    NonlinearConstraint(self.cons, self.nl_lb, self.nl_ub, jac=self.cons_jac, hess=self.cons_hess)
                )
            else:
                out.append(NonlinearConstraint(self.cons, self.nl_lb, self.nl_ub))
        return out

    def constraints_dict(self, derivatives: bool = True):
        """The same constraints in the dict form (for SLSQP/COBYLA): 'eq' is c = 0, 'ineq' is c ≥ 0."""
        rows = []  # (kind, f(x) -> array, jac(x) -> array)
        if self.A is not None:
            A = np.asarray(self.A, dtype=float)
            for i in range(A.shape[0]):
                a, lo, up = A[i], self.lin_lb[i], self.lin_ub[i]
                if np.isfinite(lo) and lo == up:
                    rows.append(("eq", lambda x, a=a, lo=lo: np.array([a @ x - lo]), lambda x, a=a: a[None]))
                    continue
                if np.isfinite(lo):
                    rows.append(("ineq", lambda x, a=a, lo=lo: np.array([a @ x - lo]), lambda x, a=a: a[None]))
                if np.isfinite(up):
                    rows.append(("ineq", lambda x, a=a, up=up: np.array([up - a @ x]), lambda x, a=a: -a[None]))
        if self.c is not None:
            for i in range(self.nl_lb.size):
                lo, up = self.nl_lb[i], self.nl_ub[i]
                ci = lambda x, i=i: np.array([self.cons(x)[i]])
                ji = lambda x, i=i: self.cons_jac(x)[i][None]
                if np.isfinite(lo) and lo == up:
                    rows.append(("eq", lambda x, ci=ci, lo=lo: ci(x) - lo, ji))
                    continue
                if np.isfinite(lo):
                    rows.append(("ineq", lambda x, ci=ci, lo=lo: ci(x) - lo, ji))
                if np.isfinite(up):
                    rows.append(("ineq", lambda x, ci=ci, up=up: up - ci(x), lambda x, ji=ji: -ji(x)))
        out = []
        for kind, fn, jac in rows:
            d = {"type": kind, "fun": fn}
            if derivatives:
                d["jac"] = jac
            out.append(d)
        return out

    def violation(self, x):
        """Largest violation of any constraint at x."""
        x = np.asarray(x, dtype=float)
        v = 0.0
        if self.lb is not None:
            v = max(v, float(np.max(np.asarray(self.lb) - x)))
        if self.ub is not None:
            v = max(v, float(np.max(x - np.asarray(self.ub))))
        if self.A is not None:
            Ax = np.asarray(self.A, dtype=float) @ x
            v = max(v, float(np.max(np.maximum(self.lin_lb - Ax, Ax - self.lin_ub))))
        if self.c is not None:
            cx = self.cons(x)
            v = max(v, float(np.max(np.maximum(self.nl_lb - cx, cx - self.nl_ub))))
        return max(v, 0.0)

    def solved(self, f, x, ftol=1e-6, ctol=1e-6):
        """The benchmark's success test: |f − f*| ≤ ftol·max(1, |f*|) and violation ≤ ctol."""
        return bool(
            np.isfinite(f) and abs(f - self.f_opt) <= ftol * max(1.0, abs(self.f_opt)) and self.violation(x) <= ctol
        )
