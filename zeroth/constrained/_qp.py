"""Convex QP subproblems, solved by maintained libraries.

    minimise ½ dᵀHd + gᵀd   subject to   lo ≤ C d ≤ hi,   lb ≤ d ≤ ub      (H positive definite
                                                                           on the feasible directions)

Used for the Euclidean projection onto the polyhedron (H = I) and for the steps of phase two.
Rows with ``lo == hi`` are equalities. Two back ends, both exact on the returned face:

* **DAQP** (Arnström, Bemporad & Axehill, *A dual active-set solver for embedded quadratic
  programming using recursive LDLᵀ updates*, IEEE TAC 2022; ``pip install daqp``) for dense
  problems up to :data:`DENSE_LIMIT` variables: a dual active-set method, so the active face and
  the multipliers are exact, and an empty feasible set is certified (exit flag −1). Chosen over
  quadprog (same Goldfarb–Idnani family, but no native bounds, no warm start and no separate
  infeasibility flag), OSQP/proxsuite (ADMM/augmented-Lagrangian: approximate faces) and
  Clarabel alone (interior point: approximate faces).
* **sparse** (larger problems, or a sparse ``C``/``H``): the *equality-constrained QP on a
  guessed active set* — one sparse KKT factorisation (:func:`scipy.sparse.linalg.splu`) —
  corrected by a few primal–dual active-set rounds and accepted only when its solution is
  feasible and its multipliers have the right signs, which makes it the exact optimum (KKT
  conditions of a convex QP). The guess is the active set of the previous, similar QP
  (``warm``) or that of **Clarabel**'s interior-point solution (Goulart & Chen, *Clarabel: an
  interior-point solver for conic programs with quadratic objectives*, 2024; sparse LDLᵀ,
  infeasibility certificates). If neither verifies, DAQP solves the dense problem
  warm-started from Clarabel's multipliers.

Multiplier convention (everywhere in :mod:`zeroth.constrained`): ``Hd + g + Cᵀw + wb = 0`` with
``w_i ≥ 0`` when the upper side of row i is active and ``w_i ≤ 0`` when the lower side is (the
same for the bound multipliers ``wb``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import clarabel
import daqp
import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu

__all__ = ["QPResult", "solve_qp", "DENSE_LIMIT"]

DENSE_LIMIT = 400  # variables + rows up to which DAQP (dense) is used when the data are dense
FEAS_TOL = 1e-9  # relative primal feasibility accepted from a guessed active set
SIGN_TOL = 1e-9  # relative wrong-sign multiplier accepted from a guessed active set


@dataclass
class QPResult:
    """Solution ``x``, row multipliers ``w``, bound multipliers ``wb``, ``status``
    ("optimal" | "infeasible" | "failed"), the active set ``active`` = (row sides, bound sides),
    each an int8 array of −1 (lower side), +1 (upper side), 0 (inactive) — pass it back as
    ``warm`` for a similar QP — and ``solver`` (which back end produced it)."""

    x: np.ndarray
    w: np.ndarray
    wb: np.ndarray
    status: str
    active: Optional[tuple] = None
    solver: str = ""


def _is_equality(lo, hi):
    return np.isfinite(lo) & (lo == hi)


def solve_qp(H, g, C, lo, hi, lb=None, ub=None, *, warm=None, method="auto") -> QPResult:
    """Solve the QP above. ``H``: (n, n) dense or scipy sparse, symmetric; ``C``: (m, n) dense or
    sparse; ``lo``, ``hi``: (m,), ±inf allowed; ``lb``, ``ub``: (n,) or None (no bounds).
    ``method``: "auto" (DAQP when dense and n + m ≤ :data:`DENSE_LIMIT`, else sparse),
    "daqp" or "sparse". ``warm``: an ``active`` of an earlier result, tried first by "sparse".
    Returns a :class:`QPResult`; raises ValueError on inconsistent shapes."""
    g = np.asarray(g, dtype=float)
    n = g.size
    m = C.shape[0]
    if C.shape[1] != n or H.shape != (n, n) or len(lo) != m or len(hi) != m:
        raise ValueError(f"solve_qp: inconsistent shapes H {H.shape}, g {g.shape}, C {C.shape}")
    lb = np.full(n, -np.inf) if lb is None else np.asarray(lb, dtype=float)
    ub = np.full(n, np.inf) if ub is None else np.asarray(ub, dtype=float)
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    if np.any(lb > ub) or np.any(lo > hi):
        return QPResult(np.zeros(n), np.zeros(m), np.zeros(n), "infeasible", None, "input")
    if method == "auto":
        dense = not (sp.issparse(H) or sp.issparse(C))
        method = "daqp" if dense and n + m <= DENSE_LIMIT else "sparse"
    if method == "daqp":
        return _daqp(H, g, C, lo, hi, lb, ub)
    if method != "sparse":
        raise ValueError(f"solve_qp: method must be 'auto', 'daqp' or 'sparse', got {method!r}")
    H, C = sp.csc_array(H), sp.csr_array(C)
    if warm is not None:
        res = _on_active_set(H, g, C, lo, hi, lb, ub, warm)
        if res is not None:
            res.solver = "active-set guess"
            return res
    res, guess = _clarabel(H, g, C, lo, hi, lb, ub)
    if res is not None and res.status == "infeasible":
        return res
    if guess is not None:
        polished = _on_active_set(H, g, C, lo, hi, lb, ub, guess)
        if polished is not None:
            polished.solver = "clarabel + active set"
            return polished
    dual = None if res is None else np.concatenate([res.wb, res.w])
    return _daqp(H.toarray(), g, C.toarray(), lo, hi, lb, ub, dual_start=dual)


def _daqp(H, g, C, lo, hi, lb, ub, dual_start=None):
    n, m = g.size, C.shape[0]
    H = np.ascontiguousarray(H.toarray() if sp.issparse(H) else H, dtype=float)
    C = np.ascontiguousarray(C.toarray() if sp.issparse(C) else C, dtype=float).reshape(m, n)
    bl, bu = np.concatenate([lb, lo]), np.concatenate([ub, hi])
    sense = np.zeros(n + m, dtype=np.int32)
    sense[_is_equality(bl, bu)] = 5
    kwargs = {} if dual_start is None else {"dual_start": np.ascontiguousarray(dual_start, dtype=float)}
    x, _, flag, info = daqp.solve(0.5 * (H + H.T), g, C, bu, bl, sense, iter_limit=max(10000, 20 * (n + m)),
                                  **kwargs)
    x = np.asarray(x, dtype=float)
    if flag == -1:
        return QPResult(x, np.zeros(m), np.zeros(n), "infeasible", None, "daqp")
    if flag not in (1, 2):
        return QPResult(x, np.zeros(m), np.zeros(n), "failed", None, "daqp")
    lam = np.asarray(info["lam"], dtype=float)
    wb, w = lam[:n], lam[n:]
    active = (np.sign(w).astype(np.int8), np.sign(wb).astype(np.int8))
    return QPResult(x, w, wb, "optimal", active, "daqp")


def _clarabel(H, g, C, lo, hi, lb, ub):
    """Clarabel's solution (approximate multipliers) and the active set it suggests, or
    ("infeasible" result, None), or (None, None) when it fails."""
    n, m = g.size, C.shape[0]
    eq = _is_equality(lo, hi)
    up = ~eq & np.isfinite(hi)
    dn = ~eq & np.isfinite(lo)
    bup, bdn = np.isfinite(ub), np.isfinite(lb)
    eye = sp.identity(n, format="csr")
    blocks = [C[eq], C[up], -C[dn], eye[bup], -eye[bdn]]
    A = sp.vstack(blocks, format="csc")
    b = np.concatenate([lo[eq], hi[up], -lo[dn], ub[bup], -lb[bdn]])
    cones = []
    if eq.any():
        cones.append(clarabel.ZeroConeT(int(eq.sum())))
    rest = A.shape[0] - int(eq.sum())
    if rest:
        cones.append(clarabel.NonnegativeConeT(rest))
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    settings.tol_gap_abs = settings.tol_gap_rel = settings.tol_feas = 1e-10
    settings.max_iter = 200
    P = sp.triu(0.5 * (H + H.T), format="csc")
    sol = clarabel.DefaultSolver(P, g, A, b, cones, settings).solve()
    status = str(sol.status)
    if "PrimalInfeasible" in status and "Almost" not in status:
        return QPResult(np.asarray(sol.x), np.zeros(m), np.zeros(n), "infeasible", None, "clarabel"), None
    if status not in ("Solved", "AlmostSolved"):
        return None, None
    x, z, s = np.asarray(sol.x), np.asarray(sol.z), np.asarray(sol.s)
    counts = np.cumsum([0, eq.sum(), up.sum(), dn.sum(), bup.sum(), bdn.sum()])
    part = lambda k: slice(counts[k], counts[k + 1])
    w, wb = np.zeros(m), np.zeros(n)
    w[eq] = z[part(0)]
    w[up] += z[part(1)]
    w[dn] -= z[part(2)]
    wb[bup] += z[part(3)]
    wb[bdn] -= z[part(4)]
    on = lambda k: z[part(k)] > s[part(k)]  # complementary pair: the larger one says active or not
    row_side, bound_side = np.zeros(m, dtype=np.int8), np.zeros(n, dtype=np.int8)
    row_side[np.flatnonzero(up)[on(1)]] = 1
    row_side[np.flatnonzero(dn)[on(2)]] = -1
    row_side[eq] = 1
    bound_side[np.flatnonzero(bup)[on(3)]] = 1
    bound_side[np.flatnonzero(bdn)[on(4)]] = -1
    bound_side[(lb == ub)] = 1
    return QPResult(x, w, wb, "optimal", (row_side, bound_side), "clarabel"), (row_side, bound_side)


def _diagonal(H):
    """H's diagonal if H is a diagonal sparse matrix, else None."""
    if not sp.issparse(H) or H.nnz > H.shape[0]:
        return None
    coo = H.tocoo()
    if np.any(coo.row != coo.col):
        return None
    return H.diagonal()


def _eqp(H, g, C, lo, hi, lb, ub, row_side, bound_side):
    """The QP with the rows/bounds of the given sides held as equalities (one sparse KKT solve
    by :func:`scipy.sparse.linalg.splu`): (x, w, wb), or None when the KKT matrix is singular."""
    n, m = g.size, C.shape[0]
    rows = np.flatnonzero(row_side)
    fixed = np.flatnonzero(bound_side)
    free = np.flatnonzero(bound_side == 0)
    x = np.zeros(n)
    x[fixed] = np.where(bound_side[fixed] > 0, ub[fixed], lb[fixed])
    rhs_rows = np.where(row_side[rows] > 0, hi[rows], lo[rows])
    if not (np.all(np.isfinite(x[fixed])) and np.all(np.isfinite(rhs_rows))):
        return None
    Cr = C[rows]
    Cf = Cr[:, free]
    diag = _diagonal(H)
    if diag is not None:  # the projections (H = I) and diagonal Hessians: no sparse indexing of H
        Hff = sp.diags_array(diag[free], format="csc")
        cross = 0.0
    else:
        Hf = H[free]
        Hff = Hf[:, free]
        cross = Hf[:, fixed] @ x[fixed] if fixed.size else 0.0
    K = sp.bmat([[Hff, Cf.T], [Cf, None]], format="csc") if rows.size else sp.csc_array(Hff)
    r1 = -g[free] - cross
    r2 = rhs_rows - (Cr[:, fixed] @ x[fixed] if fixed.size else 0.0)
    rhs = np.concatenate([r1, r2])
    if K.shape[0]:
        try:
            lu = splu(K)
        except RuntimeError:  # singular: dependent active rows, or H singular on the face
            return None
        sol = lu.solve(rhs)
        sol = sol + lu.solve(rhs - K @ sol)  # one step of iterative refinement
        if not np.all(np.isfinite(sol)):
            return None
        x[free] = sol[: free.size]
    w = np.zeros(m)
    w[rows] = sol[free.size:] if K.shape[0] else 0.0
    wb = np.zeros(n)
    wb[fixed] = -(H @ x + g + C.T @ w)[fixed]
    return x, w, wb


def _on_active_set(H, g, C, lo, hi, lb, ub, active, rounds=8):
    """Primal–dual active-set iterations from a guessed active set (Hintermüller, Ito & Kunisch,
    SIAM J. Optim. 13, 2003): solve the QP on the guess; add every violated row/bound on the
    violated side, drop every row/bound whose multiplier has the wrong sign; repeat at most
    ``rounds`` times. Returns the result only once it satisfies every KKT condition of the full
    QP (then it is the optimum, exactly), else None."""
    row_side, bound_side = (np.array(a, dtype=np.int8) for a in active)
    n, m = g.size, C.shape[0]
    if row_side.shape != (m,) or bound_side.shape != (n,):
        return None
    eq = _is_equality(lo, hi)
    fixed_var = lb == ub
    row_side[eq] = 1
    bound_side[fixed_var] = 1
    row_side[(row_side > 0) & ~np.isfinite(hi)] = 0
    row_side[(row_side < 0) & ~np.isfinite(lo)] = 0
    bound_side[(bound_side > 0) & ~np.isfinite(ub)] = 0
    bound_side[(bound_side < 0) & ~np.isfinite(lb)] = 0
    cmax = max(1.0, float(np.max(np.abs(C.data), initial=0.0))) if sp.issparse(C) else 1.0
    for _ in range(rounds):
        sol = _eqp(H, g, C, lo, hi, lb, ub, row_side, bound_side)
        if sol is None:
            return None
        x, w, wb = sol
        scale_x = 1.0 + float(np.max(np.abs(x), initial=0.0))
        Cx = C @ x
        tol_r = FEAS_TOL * (1.0 + np.abs(Cx)) * cmax
        up_r, dn_r = (Cx > hi + tol_r) & (row_side == 0), (Cx < lo - tol_r) & (row_side == 0)
        up_b = (x > ub + FEAS_TOL * scale_x) & (bound_side == 0)
        dn_b = (x < lb - FEAS_TOL * scale_x) & (bound_side == 0)
        wscale = 1.0 + float(np.max(np.abs(g), initial=0.0)) + float(np.max(np.abs(w), initial=0.0)) \
            + float(np.max(np.abs(wb), initial=0.0))
        wrong_r = ~eq & (w * row_side < -SIGN_TOL * wscale)
        wrong_b = ~fixed_var & (wb * bound_side < -SIGN_TOL * wscale)
        if not (up_r.any() or dn_r.any() or up_b.any() or dn_b.any() or wrong_r.any() or wrong_b.any()):
            return QPResult(np.clip(x, lb, ub), w, wb, "optimal", (row_side, bound_side), "active set")
        row_side[up_r], row_side[dn_r], row_side[wrong_r] = 1, -1, 0
        bound_side[up_b], bound_side[dn_b], bound_side[wrong_b] = 1, -1, 0
    return None
