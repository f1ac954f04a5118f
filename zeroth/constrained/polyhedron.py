"""The polyhedron Ω = {z : lb ≤ z ≤ ub, l ≤ A z ≤ u} and the operations the active-set
methods need: Euclidean projection, active constraints, ratio test, violation.

Projection: bounds only → ``clip`` (exact, O(n)); general rows → the QP of :mod:`._qp` with
H = I (DAQP for small dense data, else a sparse active-set guess verified by its KKT conditions,
from the previous projection or from Clarabel): exact face and multipliers, Ω = ∅ detected.
``A`` may be dense or scipy sparse (kept sparse).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import scipy.sparse as sp

from ._qp import solve_qp

__all__ = ["Polyhedron", "EmptyPolyhedronError"]


class EmptyPolyhedronError(Exception):
    """The linear constraints and bounds admit no point."""


class Polyhedron:
    """Ω = {lb ≤ z ≤ ub, l ≤ A z ≤ u}; rows of ``A`` with l == u are equalities."""

    def __init__(self, lb, ub, A=None, l=None, u=None):  # noqa: E741 - the paper's l ≤ Az ≤ u
        self.lb = np.asarray(lb, dtype=float)
        self.ub = np.asarray(ub, dtype=float)
        self.n = self.lb.size
        if A is None:
            A = np.zeros((0, self.n))
        self.A = sp.csr_array(A, dtype=float) if sp.issparse(A) else np.asarray(A, dtype=float).reshape(-1, self.n)
        self.sparse = sp.issparse(self.A)
        self.m = self.A.shape[0]
        self.l = np.full(self.m, -np.inf) if l is None else np.asarray(l, dtype=float)
        self.u = np.full(self.m, np.inf) if u is None else np.asarray(u, dtype=float)
        if self.sparse:
            A_sparse = cast(Any, self.A)  # a csr_array here (scipy.sparse has no type stubs)
            self._row_norms = np.sqrt(np.asarray(A_sparse.multiply(A_sparse).sum(axis=1)).reshape(-1))
        else:
            self._row_norms = np.linalg.norm(self.A, axis=1) if self.m else np.zeros(0)
        cols = (self.A != 0).sum(axis=0) if self.m else np.zeros(self.n)
        self._coupled = np.asarray(cols).reshape(-1) > 0  # coordinates that some row involves
        # H = I of the projection: its diagonal for the sparse back end, a dense identity for DAQP
        self._eye = np.ones(self.n) if self.sparse or self.n > 400 else np.eye(self.n)
        self._warm = None  # active set of the last projection: a guess for the next (verified, never trusted)
        self.hint = None  # an active set from elsewhere (the last step QP's), tried first by the next projection

    # --- projection -------------------------------------------------------------------
    def _project_qp(self, y, lo, hi, lb, ub):
        guesses = [self.hint, self._warm] if self.hint is not None else self._warm
        res = solve_qp(self._eye, -y, self.A, lo, hi, lb, ub, warm=guesses)
        if res.status == "infeasible":
            raise EmptyPolyhedronError("the linear constraints and bounds are inconsistent")
        if res.status != "optimal":
            raise np.linalg.LinAlgError(f"projection onto the polyhedron failed ({res.solver})")
        self._warm = res.active
        return res

    def project(self, y, with_multipliers=False):
        """argmin ‖z − y‖ over Ω (raises :class:`EmptyPolyhedronError` when Ω = ∅); with
        ``with_multipliers`` also the row and bound multipliers (convention of :mod:`._qp`)."""
        y = np.asarray(y, dtype=float)
        if self.m == 0:
            z = np.clip(y, self.lb, self.ub)
            if with_multipliers:
                return z, np.zeros(0), y - z
            return z
        res = self._project_qp(y, self.l, self.u, self.lb, self.ub)
        z = np.clip(res.x, self.lb, self.ub)
        if with_multipliers:
            return z, res.w, res.wb
        return z

    def project_step(self, z, v):
        """P_Ω(z + v) − z, computed as the projection of v onto Ω − z (no cancellation in
        (z + v) − z when |z| ≫ |v|: the stationarity measure stays meaningful far out)."""
        v = np.asarray(v, dtype=float)
        lb, ub = self.lb - z, self.ub - z
        if self.m == 0:
            return np.clip(v, lb, ub)
        Az = self.A @ z
        res = self._project_qp(v, self.l - Az, self.u - Az, lb, ub)
        return np.clip(res.x, lb, ub)

    def projection_bounds(self, z, v):
        """Bounds (lower, upper) on ‖P_Ω(z + v) − z‖∞ without a projection: the coordinates that no
        row involves are projected exactly (clipping); the others lie in the box [lb − z, ub − z]."""
        lb, ub = self.lb - z, self.ub - z
        sep = ~self._coupled
        lower = float(np.max(np.abs(np.clip(v[sep], lb[sep], ub[sep])), initial=0.0))
        if not sep.all():
            reach = np.maximum(np.abs(lb[~sep]), np.abs(ub[~sep]))
            return lower, max(lower, float(np.max(reach)))
        return lower, lower

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

    def active_sets(self, z, tol=1e-10):
        """Indices of the active bounds and of the active general rows at z."""
        at_lb, at_ub, at_l, at_u = self.active(z, tol)
        return np.flatnonzero(at_lb | at_ub), np.flatnonzero(at_l | at_u)

    def active_matrix(self, z, tol=1e-10):
        """Dense rows (unit vectors for bounds, rows of A) of the constraints active at z."""
        fixed, rows = self.active_sets(z, tol)
        Ar = self.A[rows]
        Ar = Ar.toarray() if sp.issparse(Ar) else Ar
        W = np.vstack([np.eye(self.n)[fixed], Ar])
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
