"""The polyhedron Ω = {z : lb ≤ z ≤ ub, l ≤ A z ≤ u} and the operations the active-set
methods need: Euclidean projection, active constraints, ratio test, violation.

Projection: bounds only → ``clip`` (exact, O(n)); general rows → the Goldfarb–Idnani QP
of :mod:`._qp` with H = I (exact face and multipliers, detects Ω = ∅).
"""
from __future__ import annotations

import numpy as np

from ._qp import solve_qp

__all__ = ["Polyhedron", "EmptyPolyhedronError"]


class EmptyPolyhedronError(Exception):
    """The linear constraints and bounds admit no point."""


class Polyhedron:
    """Ω = {lb ≤ z ≤ ub, l ≤ A z ≤ u}; rows of ``A`` with l == u are equalities."""

    def __init__(self, lb, ub, A=None, l=None, u=None):
        self.lb = np.asarray(lb, dtype=float)
        self.ub = np.asarray(ub, dtype=float)
        self.n = self.lb.size
        self.A = np.zeros((0, self.n)) if A is None else np.asarray(A, dtype=float).reshape(-1, self.n)
        self.l = np.full(self.A.shape[0], -np.inf) if l is None else np.asarray(l, dtype=float)
        self.u = np.full(self.A.shape[0], np.inf) if u is None else np.asarray(u, dtype=float)
        self.m = self.A.shape[0]
        self._row_norms = np.linalg.norm(self.A, axis=1) if self.m else np.zeros(0)
        finite = np.isfinite(self.lb) | np.isfinite(self.ub)
        self._bound_rows = np.flatnonzero(finite)
        self._C = np.vstack([self.A, np.eye(self.n)[self._bound_rows]])
        self._lo = np.concatenate([self.l, self.lb[self._bound_rows]])
        self._hi = np.concatenate([self.u, self.ub[self._bound_rows]])

    # --- projection -------------------------------------------------------------------
    def project(self, y, with_multipliers=False):
        """argmin ‖z − y‖ over Ω (raises :class:`EmptyPolyhedronError` when Ω = ∅)."""
        y = np.asarray(y, dtype=float)
        if self.m == 0:
            z = np.clip(y, self.lb, self.ub)
            if with_multipliers:
                return z, np.zeros(0), y - z
            return z
        res = solve_qp(np.eye(self.n), -y, self._C, self._lo, self._hi)
        if res.status == "infeasible":
            raise EmptyPolyhedronError("the linear constraints and bounds are inconsistent")
        z = np.clip(res.x, self.lb, self.ub)
        if with_multipliers:
            w = res.w
            wb = np.zeros(self.n)
            wb[self._bound_rows] = w[self.m:]
            return z, w[: self.m], wb
        return z

    # --- faces --------------------------------------------------------------------------
    def active(self, z, tol=1e-10):
        """Active bounds (masks at lb / at ub) and general rows (masks at l / at u) at z."""
        sc = tol * (1.0 + np.abs(z))
        at_lb = z <= self.lb + sc
        at_ub = z >= self.ub - sc
        Az = self.A @ z
        sr = tol * (1.0 + np.abs(Az))
        at_l = Az <= self.l + sr
        at_u = Az >= self.u - sr
        return at_lb, at_ub, at_l, at_u

    def active_matrix(self, z, tol=1e-10):
        """Rows (unit vectors for bounds, rows of A) of the constraints active at z."""
        at_lb, at_ub, at_l, at_u = self.active(z, tol)
        fixed = np.flatnonzero(at_lb | at_ub)
        rows = np.flatnonzero(at_l | at_u)
        W = np.vstack([np.eye(self.n)[fixed], self.A[rows]])
        return W, fixed, rows

    def max_step(self, z, d):
        """Largest t ≥ 0 with z + t d ∈ Ω (may be inf) and the constraint that blocks it."""
        t, which = np.inf, None
        dmax = float(np.max(np.abs(d), initial=0.0))
        if dmax == 0.0:
            return t, which
        with np.errstate(divide="ignore", invalid="ignore"):
            for bound, sign, kind in ((self.ub, 1, "ub"), (self.lb, -1, "lb")):
                gap = sign * (bound - z)
                mask = (sign * d > 1e-12 * dmax) & ((gap > 1e-12 * (1 + np.abs(z))) | (sign * d > 1e-8 * dmax))
                if np.any(mask):
                    ratios = (bound[mask] - z[mask]) / d[mask]
                    i = int(np.argmin(ratios))
                    if ratios[i] < t:
                        t, which = max(0.0, float(ratios[i])), (kind, int(np.flatnonzero(mask)[i]))
            if self.m:
                Az, Ad = self.A @ z, self.A @ d
                for bound, sign, kind in ((self.u, 1, "u"), (self.l, -1, "l")):
                    gap = sign * (bound - Az)
                    big = sign * Ad > 1e-8 * dmax * self._row_norms
                    mask = (sign * Ad > 1e-12 * dmax * self._row_norms) & ((gap > 1e-12 * (1 + np.abs(Az))) | big)
                    if np.any(mask):
                        ratios = (bound[mask] - Az[mask]) / Ad[mask]
                        i = int(np.argmin(ratios))
                        if ratios[i] < t:
                            t, which = max(0.0, float(ratios[i])), (kind, int(np.flatnonzero(mask)[i]))
        return t, which

    def violation(self, z):
        """Largest violation of a bound or a linear row at z (0 when z ∈ Ω)."""
        v = 0.0
        if self.n:
            v = max(v, float(np.max(np.maximum(self.lb - z, z - self.ub), initial=0.0)))
        if self.m:
            Az = self.A @ z
            v = max(v, float(np.max(np.maximum(self.l - Az, Az - self.u), initial=0.0)))
        return v
