"""Dense strictly convex QP by the Goldfarb–Idnani dual active-set method.

    minimise ½ dᵀHd + gᵀd   subject to   lo ≤ C d ≤ hi      (H positive definite)

Used for two jobs: the Euclidean projection onto the polyhedron (H = I) and the
feasibility (constraint) steps of phase two. We write our own instead of depending on
a QP library (OSQP, Clarabel via ``qpsolvers``) because (a) the problems here are small
and dense, (b) a dual active-set method returns an *exact* vertex/face solution with
exact multipliers and an exact active set — what an active-set outer method needs —
whereas ADMM/interior-point codes return approximate ones, and (c) it detects an empty
feasible set (``status="infeasible"``) with a certificate, which gives us the
"inconsistent constraints" status without extra machinery.

Multiplier convention (everywhere in :mod:`zeroth.constrained`): ``Hd + g + Cᵀw = 0`` with
``w_i ≥ 0`` when the upper side of row i is active, ``w_i ≤ 0`` when the lower side is.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_factor, cho_solve, LinAlgError

__all__ = ["QPResult", "solve_qp"]


@dataclass
class QPResult:
    """Solution ``x``, row multipliers ``w``, ``active`` row indices and ``status``."""

    x: np.ndarray
    w: np.ndarray
    active: np.ndarray
    status: str  # "optimal" | "infeasible" | "maxiter"


def _constraint_list(C, lo, hi):
    """Split two-sided rows into GI half-spaces nᵀd ≥ b: (row, sign, is_equality)."""
    items = []
    for i in range(C.shape[0]):
        l, u = lo[i], hi[i]
        if np.isfinite(l) and np.isfinite(u) and abs(u - l) <= 1e-14 * (1.0 + abs(l)):
            items.append((i, 1.0, True))
            continue
        if np.isfinite(l):
            items.append((i, 1.0, False))
        if np.isfinite(u):
            items.append((i, -1.0, False))
    return items


def solve_qp(H, g, C, lo, hi, *, feastol=1e-11, maxiter=None) -> QPResult:
    """Solve the QP above; ``status`` says whether the answer is optimal or the rows are inconsistent."""
    n = g.shape[0]
    C = np.asarray(C, dtype=float).reshape(-1, n)
    try:
        factor = cho_factor(H)
    except LinAlgError as exc:  # pragma: no cover - callers pass PD matrices
        raise ValueError("solve_qp needs a positive definite H") from exc
    Hinv = cho_solve(factor, np.eye(n))
    x = -Hinv @ g
    items = _constraint_list(C, lo, hi)
    normals = [s * C[i] for i, s, _ in items]
    rhs = [s * (lo[i] if s > 0 else hi[i]) for i, s, _ in items]
    is_eq = [e for _, _, e in items]
    scale = [max(1e-300, float(np.linalg.norm(v))) for v in normals]
    active: list[int] = []
    u: list[float] = []
    if maxiter is None:
        maxiter = 10 * (len(items) + n) + 50
    it = 0

    def add(p: int) -> str:
        """Make half-space p active (the GI step loop); return 'ok', 'skip' or 'infeasible'."""
        nonlocal x, it
        n_p, b_p = normals[p], rhs[p]
        u_p = 0.0
        hn = Hinv @ n_p
        while True:
            it += 1
            if it > maxiter:
                return "maxiter"
            q = len(active)
            if q:
                N = np.stack([normals[j] for j in active], axis=1)
                HN = Hinv @ N
                M = N.T @ HN
                r = np.linalg.solve(M, HN.T @ n_p)
                z = hn - HN @ r
            else:
                r = np.zeros(0)
                z = hn
            s_p = float(n_p @ x - b_p)
            zn = float(z @ n_p)
            t1, k = np.inf, -1
            for idx, j in enumerate(active):
                if not is_eq[j] and r[idx] > 1e-14:
                    ratio = u[idx] / r[idx]
                    if ratio < t1:
                        t1, k = ratio, idx
            dependent = zn <= 1e-12 * float(n_p @ hn)
            t2 = np.inf if dependent else -s_p / zn
            if dependent and is_eq[p] and abs(s_p) <= feastol * (1 + abs(b_p)) * 10:
                return "skip"  # redundant equality
            t = min(t1, t2)
            if not np.isfinite(t):
                return "infeasible"
            if np.isfinite(t2):
                x = x + t * z
            for idx in range(q):
                u[idx] -= t * r[idx]
            u_p += t
            if t2 <= t1:
                active.append(p)
                u.append(u_p)
                return "ok"
            del active[k]
            del u[k]

    # equalities first (orient each so that it is "violated" from below)
    for p in range(len(items)):
        if is_eq[p]:
            if normals[p] @ x - rhs[p] > 0:
                normals[p], rhs[p] = -normals[p], -rhs[p]
            status = add(p)
            if status in ("infeasible", "maxiter"):
                return _finish(x, active, u, items, normals, C, status)
    while True:
        worst, p = 0.0, -1
        xs = max(1.0, float(np.max(np.abs(x)))) if n else 1.0
        for j in range(len(items)):
            if is_eq[j] or j in active:
                continue
            viol = (normals[j] @ x - rhs[j]) / scale[j]
            if viol < -feastol * (xs + abs(rhs[j]) / scale[j]) and viol < worst:
                worst, p = viol, j
        if p < 0:
            return _finish(x, active, u, items, normals, C, "optimal")
        status = add(p)
        if status in ("infeasible", "maxiter"):
            return _finish(x, active, u, items, normals, C, status)


def _finish(x, active, u, items, normals, C, status) -> QPResult:
    w = np.zeros(C.shape[0])
    rows = []
    for j, uj in zip(active, u):
        i, s, eq = items[j]
        # GI: Hx + g = Σ u_j n_j with n_j = s·C_i  →  Hx + g + Cᵀw = 0 with w_i = −s·u_j
        # (for an equality flipped by orientation, the sign lives in normals[j] itself)
        sign = float(np.sign(normals[j] @ C[i])) if eq else s
        w[i] += -sign * uj
        rows.append(i)
    return QPResult(x=x, w=w, active=np.array(sorted(set(rows)), dtype=int), status=status)
