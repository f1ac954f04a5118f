"""The problem in NPASA's form: min f(z) s.t. h(z) = 0, z ∈ Ω (a polyhedron).

z = (x, s): nonlinear inequalities cl ≤ c(x) ≤ cu become h = c(x) − s = 0 with the slack
bounds cl ≤ s ≤ cu put into Ω (NPASA's reduction); equalities give h = c(x) − cl.
Linear constraints and bounds stay explicit in Ω. Derivative precision is an explicit
argument (``rough``) of every method that needs one.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.optimize._numdiff import approx_derivative

from .polyhedron import Polyhedron

__all__ = ["NLP"]


class NLP:
    """f, h, their derivatives and Lagrangian Hessians in z-space, over ``Functions``."""

    def __init__(self, F):
        self.F = F
        spec = F.spec
        self.n = spec.n
        eq = np.isfinite(F.cl) & (F.cl == F.cu)
        self.eq_idx = np.flatnonzero(eq)
        self.in_idx = np.flatnonzero(~eq & (np.isfinite(F.cl) | np.isfinite(F.cu)))
        self.ns = self.in_idx.size
        self.N = self.n + self.ns
        self.mh = self.eq_idx.size + self.ns
        lb = np.concatenate([spec.lb, F.cl[self.in_idx]])
        ub = np.concatenate([spec.ub, F.cu[self.in_idx]])
        if sp.issparse(spec.A):
            A = sp.hstack([spec.A, sp.csr_array((spec.A.shape[0], self.ns))], format="csr")
        else:
            A = np.hstack([spec.A, np.zeros((spec.A.shape[0], self.ns))])
        self.poly = Polyhedron(lb, ub, A, spec.al, spec.au)
        self._last_J = None  # (Jacobian of c, its z-space ∇h)

    def x(self, z):
        return z[: self.n]

    def z_from_x(self, x):
        c = self.F.c(x)
        s = np.clip(c[self.in_idx], self.F.cl[self.in_idx], self.F.cu[self.in_idx]) if self.ns else np.zeros(0)
        return np.concatenate([x, s])

    def with_best_slacks(self, z):
        """z with each slack set to the value closest to c(x) inside its bounds (‖h‖ then measures
        only the violation of c, and f is unchanged)."""
        if not self.ns:
            return z
        return np.concatenate([z[: self.n], self.z_from_x(z[: self.n])[self.n :]])

    def f(self, z):
        return self.F.f(self.x(z))

    def g(self, z, rough=False):
        return np.concatenate([self.F.g(self.x(z), rough), np.zeros(self.ns)])

    def h(self, z):
        if self.mh == 0:
            return np.zeros(0)
        c = self.F.c(self.x(z))
        return np.concatenate([c[self.eq_idx] - self.F.cl[self.eq_idx], c[self.in_idx] - z[self.n :]])

    def J(self, z, rough=False):
        """∇h in z-space, (mh, N) dense; built once per Jacobian of c that ``Functions`` returns
        (its cache hands back the same array for the same x and precision)."""
        if self.mh == 0:
            return np.zeros((0, self.N))
        Jc = self.F.J(self.x(z), rough)
        if self._last_J is not None and self._last_J[0] is Jc:
            return self._last_J[1]
        top = np.hstack([Jc[self.eq_idx], np.zeros((self.eq_idx.size, self.ns))])
        bottom = np.hstack([Jc[self.in_idx], -np.eye(self.ns)])
        Jz = np.vstack([top, bottom])
        Jz.flags.writeable = False  # shared by the callers of the same Jacobian
        self._last_J = (Jc, Jz)
        return Jz

    def c_multipliers(self, lam):
        """Multipliers λ of h mapped onto the components of c (inactive-free components get 0)."""
        v = np.zeros(self.F.m)
        v[self.eq_idx] = lam[: self.eq_idx.size]
        v[self.in_idx] = lam[self.eq_idx.size :]
        return v

    def grad_lagrangian(self, z, lam, rough=False):
        g = self.g(z, rough)
        return g + self.J(z, rough).T @ lam if self.mh else g

    def hess_lagrangian_x(self, z, lam, mode):
        """∇²_xx L (slacks enter L linearly): exact (``mode="exact"``, dense or sparse as the user's
        ``hess`` returns it) or forward differences of ∇_x L on the free variables (``"2-point"``,
        scipy's approx_derivative, steps inside the bounds; fixed variables get zero rows/columns)."""
        x = self.x(z)
        F = self.F
        v = self.c_multipliers(lam)
        if mode == "exact":
            Hf = F.hess_f(x)
            if not F.m:
                return Hf
            Hc = F.hess_c(x, v)
            if sp.issparse(Hf) or sp.issparse(Hc):
                return sp.csr_array(Hf) + sp.csr_array(Hc)
            return Hf + Hc
        free = np.flatnonzero(F.free)
        H = np.zeros((self.n, self.n))
        if free.size == 0:
            return H

        def grad_l(u):
            y = x.copy()
            y[free] = u
            gl = F.g(y) + (F.J(y).T @ v if F.m else 0.0)
            return gl[free]

        base = grad_l(x[free])
        Hff = approx_derivative(grad_l, x[free], method="2-point", f0=base, bounds=(F.spec.lb[free], F.spec.ub[free]))
        H[np.ix_(free, free)] = 0.5 * (Hff + Hff.T)
        return H

    def violation_x(self, x):
        """Largest violation of any original constraint (bounds, linear, nonlinear) at x; inf
        when a nonlinear constraint is NaN/inf there (raises NonFiniteError otherwise unchanged)."""
        spec, F = self.F.spec, self.F
        v = float(np.max(np.maximum(spec.lb - x, x - spec.ub), initial=0.0))
        if spec.A.shape[0]:
            Ax = spec.A @ x
            v = max(v, float(np.max(np.maximum(spec.al - Ax, Ax - spec.au), initial=0.0)))
        if F.m:
            c = F.c(x)
            v = max(v, float(np.max(np.maximum(F.cl - c, c - F.cu), initial=0.0)))
        return v
