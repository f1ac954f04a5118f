"""Polyhedral active-set method (PASA-like): minimise a smooth φ over Ω = {lb ≤ z ≤ ub, l ≤ Az ≤ u}.

Two phases, as in Hager & Zhang's PASA (arXiv:1606.01992):

* **gradient projection (GP)** — d = P_Ω(z − α g) − z with a Barzilai–Borwein α and an
  Armijo search along d; it identifies the active face;
* **face phase** — a quasi-Newton step on the current face {active constraints held as
  equalities}: p = −Z (ZᵀBZ)⁻¹ Zᵀg with Z a null-space basis of the active rows and B a damped
  BFGS matrix in the full space, a ratio test to the first blocking constraint, Armijo backtracking.

Branching (our choices where PASA leaves constants open): global error
E = ‖P_Ω(z − g) − z‖∞, local (face) error e = ‖ZZᵀg‖∞. GP → face once a GP step leaves the
active set unchanged and e ≥ θE; face → GP when e < θE (the face is nearly optimal but a
constraint should be released) or the face line search fails; θ = 0.1.
Stop when E ≤ tol; give up ("linesearch") when no step makes progress (a face step blocked at
once falls back to GP; a step that does not move z ends the solve).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import BFGS

from ._functions import NonFiniteError
from .polyhedron import Polyhedron

__all__ = ["PolyhedralResult", "minimize_polyhedral", "null_space", "DampedBFGS"]

THETA = 0.1
ARMIJO = 1e-4


@dataclass
class PolyhedralResult:
    """What the polyhedral solver (PASA's phase two on a fixed polyhedron) returns.

    Attributes:
        z: the final point.
        value: the objective there.
        grad: its gradient there.
        B: the (BFGS or exact) Hessian approximation in use at the end.
        nit: iterations taken.
        error: the final stationarity error ‖P_{Ω−z}(−∇f)‖∞.
        reason: ``"converged"``, ``"maxiter"`` or ``"linesearch"`` (no acceptable step).
    """

    z: np.ndarray
    value: float
    grad: np.ndarray
    B: np.ndarray
    nit: int
    error: float
    reason: str  # "converged" | "maxiter" | "linesearch"


def null_space(W, n):
    """Orthonormal basis of {d : W d = 0}."""
    if W.shape[0] == 0:
        return np.eye(n)
    Q, R = np.linalg.qr(W.T, mode="complete")
    diag = np.abs(np.diag(R)) if R.size else np.zeros(0)
    rank = int(np.sum(diag > 1e-10 * max(1.0, diag.max(initial=0.0))))
    return Q[:, rank:]


class DampedBFGS:
    """scipy's ``BFGS(exception_strategy="damp_update")`` (Powell damping, Nocedal & Wright
    p. 536) with a known initial matrix ``B0``: ``matrix()`` is B0 until the first update, then
    scipy's matrix. ``init_scale`` as in scipy ("auto": yᵀy/yᵀs·I at the first update) or None
    (B0 itself). Updates with s = 0 or non-finite data are skipped."""

    def __init__(self, B0, init_scale=None):
        self.B0 = 0.5 * (B0 + B0.T)
        if init_scale is None:  # scipy reads a size-1 array as a scalar (float() of a (1, 1) array fails)
            init_scale = float(self.B0[0, 0]) if self.B0.size == 1 else self.B0
        self._bfgs = BFGS(exception_strategy="damp_update", init_scale=init_scale)
        self._bfgs.initialize(self.B0.shape[0], "hess")
        self.updated = False

    def matrix(self):
        """The current Hessian approximation: B0 until the first update, then scipy's matrix."""
        return self._bfgs.get_matrix() if self.updated else self.B0

    def update(self, s, y):
        """Damped BFGS update with step ``s`` and gradient change ``y`` (skipped for s = 0 or
        non-finite data; y = 0 — f linear along s — passes the limit of the damped update)."""
        if not (np.any(s) and np.all(np.isfinite(s)) and np.all(np.isfinite(y))):
            return
        if not np.any(y):
            # f linear along s: scipy skips y = 0 (with a warning); pass the limit of the damped
            # update instead (sᵀy ≈ 0: the curvature along s shrinks fivefold, so steps along an
            # unbounded direction grow geometrically and divergence is detected)
            y = s * (1e-12 * float(s @ (self.matrix() @ s)) / float(s @ s))
            if not np.any(y):
                return
        self._bfgs.update(s, y)
        self.updated = True


def _armijo(value, z, d, phi0, slope, t0, maxback=40):
    """Backtracking (with quadratic interpolation) from t0; NaN/inf values count as failures."""
    t = t0
    for _ in range(maxback):
        znew = z + t * d
        try:
            val = value(znew)
        except NonFiniteError:
            t *= 0.25
            continue
        if val <= phi0 + ARMIJO * t * slope:
            return t, znew, val
        denom = 2.0 * (val - phi0 - slope * t)
        tq = -slope * t * t / denom if denom > 0 else 0.5 * t
        t = min(0.5 * t, max(0.1 * t, tq))
    return None, z, phi0


def _snap(poly, z):
    """Remove round-off outside the bounds."""
    return np.clip(z, poly.lb, poly.ub)


def minimize_polyhedral(value, grad, z0, poly: Polyhedron, tol, maxiter, B=None, on_iter=None):
    """Minimise φ (``value``/``grad``) over ``poly`` from z0 ∈ Ω; return a :class:`PolyhedralResult`."""
    n = z0.size
    z = z0.copy()
    phi, g = value(z), grad(z)
    bfgs = DampedBFGS(np.eye(n) if B is None else B)
    mode, alpha, prev_active, nit = "gp", None, None, 0
    while True:
        E = float(np.max(np.abs(poly.project_step(z, -g)), initial=0.0))
        B = bfgs.matrix()
        if E <= tol:
            return PolyhedralResult(z, phi, g, B, nit, E, "converged")
        if nit >= maxiter:
            return PolyhedralResult(z, phi, g, B, nit, E, "maxiter")
        nit += 1
        W, fixed, rows = poly.active_matrix(z)
        Z = null_space(W, n)
        gz = Z @ (Z.T @ g)
        e = float(np.max(np.abs(gz), initial=0.0))
        if mode == "face" and e < THETA * E:
            mode = "gp"
        step = None
        if mode == "face":
            Bz = Z.T @ B @ Z
            try:
                p = -Z @ np.linalg.solve(Bz, Z.T @ g)
            except np.linalg.LinAlgError:
                p = -gz
            slope = float(g @ p)
            tmax = poly.max_step(z, p)[0] if slope < 0 else 0.0
            if tmax * float(np.max(np.abs(p), initial=0.0)) > 1e-14 * (1.0 + float(np.max(np.abs(z)))):
                t, znew, val = _armijo(value, z, p, phi, slope, min(1.0, tmax))
                if t is not None:
                    step = (_snap(poly, znew) if np.isfinite(tmax) and t >= tmax else znew, val)
            if step is None:
                mode = "gp"
        if mode == "gp":
            if alpha is None:
                alpha = 1.0 / max(1.0, float(np.max(np.abs(g))))
            d = poly.project(z - alpha * g) - z
            slope = float(g @ d)
            if slope >= 0 or not np.any(d):
                return PolyhedralResult(z, phi, g, B, nit, E, "linesearch")
            t, znew, val = _armijo(value, z, d, phi, slope, 1.0)
            if t is None:
                return PolyhedralResult(z, phi, g, B, nit, E, "linesearch")
            step = (_snap(poly, znew), val)
            act = tuple(fixed), tuple(rows)
            W2, f2, r2 = poly.active_matrix(step[0])
            if (tuple(f2), tuple(r2)) == act or (tuple(f2), tuple(r2)) == prev_active:
                mode = "face"
            prev_active = (tuple(f2), tuple(r2))
        assert step is not None  # the projected-gradient branch always sets a step or returns
        znew, val = step
        if np.array_equal(znew, z):
            return PolyhedralResult(z, phi, g, B, nit, E, "linesearch")
        try:
            gnew = grad(znew)
        except NonFiniteError:
            return PolyhedralResult(z, phi, g, B, nit, E, "linesearch")
        s, y = znew - z, gnew - g
        sy = float(s @ y)
        alpha = min(1e10, max(1e-10, float(s @ s) / sy)) if sy > 0 else (alpha or 1.0) * 2.0
        bfgs.update(s, y)
        z, phi, g = znew, val, gnew
        if on_iter is not None:
            on_iter(z)
