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
  guessed active set* — one sparse KKT factorisation (:func:`scipy.sparse.linalg.splu`, the
  matrix assembled from coordinate lists, a tiny dual regularisation removed by iterative
  refinement) — corrected by primal–dual active-set rounds and accepted only when every KKT
  condition of the QP holds (active rows satisfied, Lagrangian gradient zero on the free
  variables, no violation, multipliers of the right signs), which makes it the exact optimum.
  Guesses, in order: the caller's (``warm``: the previous similar QP's active set, or another
  one it knows), the constraints active at d = 0 (for steps and shifted projections: at the
  current point), the empty set; then the active set of **PIQP**'s solution (Schwan, Jiang,
  Kuhn & Jones, *PIQP: a proximal interior-point quadratic programming solver*, IEEE CDC 2023;
  sparse LDLᵀ, bounds handled natively — about 3× less CPU than Clarabel on the scaling
  family of ``bench.constrained``), then that of **Clarabel**'s (Goulart & Chen, *Clarabel: an
  interior-point solver for conic programs with quadratic objectives*, 2024), which also
  certifies an empty feasible set. If none verifies, DAQP solves the dense problem
  warm-started from Clarabel's multipliers. Interior-point methods cannot be warm-started,
  so they run only when no guess verifies (at n = 3000 a cold solve costs ~100–400 ms, a
  verified guess one factorisation, ~1–5 ms).

Multiplier convention (everywhere in :mod:`zeroth.constrained`): ``Hd + g + Cᵀw + wb = 0`` with
``w_i ≥ 0`` when the upper side of row i is active and ``w_i ≤ 0`` when the lower side is (the
same for the bound multipliers ``wb``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import clarabel
import daqp
import numpy as np
import piqp
import scipy.sparse as sp
from scipy.sparse.linalg import splu

__all__ = ["QPResult", "solve_qp", "DENSE_LIMIT"]

DENSE_LIMIT = 400  # variables + rows up to which DAQP (dense) is used when the data are dense
FEAS_TOL = 1e-9  # relative primal feasibility accepted from a guessed active set
SIGN_TOL = 1e-9  # relative wrong-sign multiplier accepted from a guessed active set
STALL_ROUNDS = 3  # primal-dual active-set rounds without fewer changes before a guess is given up


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
    """Solve the QP above. ``H``: (n, n) dense or scipy sparse, symmetric, or an (n,) array: the
    diagonal of a diagonal H (sparse path); ``C``: (m, n) dense or sparse; ``lo``, ``hi``: (m,),
    ±inf allowed; ``lb``, ``ub``: (n,) or None (no bounds). ``method``: "auto" (DAQP when dense
    and n + m ≤ :data:`DENSE_LIMIT`, else sparse), "daqp" or "sparse". ``warm``: an ``active`` of
    an earlier result, or a list of them, tried first by "sparse". Returns a :class:`QPResult`;
    raises ValueError on inconsistent shapes."""
    g = np.asarray(g, dtype=float)
    n = g.size
    m = C.shape[0]
    diagonal = not sp.issparse(H) and np.ndim(H) == 1
    if C.shape[1] != n or (H.shape != (n,) if diagonal else H.shape != (n, n)) or len(lo) != m or len(hi) != m:
        raise ValueError(f"solve_qp: inconsistent shapes H {H.shape}, g {g.shape}, C {C.shape}")
    lb = np.full(n, -np.inf) if lb is None else np.asarray(lb, dtype=float)
    ub = np.full(n, np.inf) if ub is None else np.asarray(ub, dtype=float)
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    if np.any(lb > ub) or np.any(lo > hi):
        return QPResult(np.zeros(n), np.zeros(m), np.zeros(n), "infeasible", None, "input")
    if method == "auto":
        dense = not (sp.issparse(H) or sp.issparse(C) or diagonal)
        method = "daqp" if dense and n + m <= DENSE_LIMIT else "sparse"
    if diagonal:
        H = sp.diags_array(np.asarray(H, dtype=float), format="csc") if method == "daqp" else np.asarray(H, dtype=float)
    if method == "daqp":
        return _daqp(H, g, C, lo, hi, lb, ub)
    if method != "sparse":
        raise ValueError(f"solve_qp: method must be 'auto', 'daqp' or 'sparse', got {method!r}")
    if not diagonal:
        H = sp.csc_array(H)
    C = C if isinstance(C, sp.csr_array) else sp.csr_array(C)
    qp = _SparseQP(H, g, C, lo, hi, lb, ub)
    guesses = [] if warm is None else (list(warm) if isinstance(warm, list) else [warm])
    guesses += [_active_at_zero(lo, hi, lb, ub), (np.zeros(m, dtype=np.int8), np.zeros(n, dtype=np.int8))]
    budget, tried = _round_budget(n + m), set()
    for guess in guesses:
        guess = None if guess is None else qp.normalize(guess)
        if guess is None or guess[0].tobytes() + guess[1].tobytes() in tried or qp.solves >= budget:
            continue
        tried.add(guess[0].tobytes() + guess[1].tobytes())
        res = _on_active_set(qp, guess, rounds=budget - qp.solves if len(tried) == 1 else min(3, budget - qp.solves))
        if res is not None:
            res.solver = "active-set guess"
            return res
    H = qp.matrix()  # the interior-point back ends take a sparse matrix
    guess = _piqp(H, g, C, lo, hi, lb, ub)
    if guess is not None:
        polished = _on_active_set(qp, guess, rounds=4)
        if polished is not None:
            polished.solver = "piqp + active set"
            return polished
    res, guess = _clarabel(H, g, C, lo, hi, lb, ub)
    if res is not None and res.status == "infeasible":
        return res
    if guess is not None:
        polished = _on_active_set(qp, guess)
        if polished is not None:
            polished.solver = "clarabel + active set"
            return polished
    dual = None if res is None else np.concatenate([res.wb, res.w])
    return _daqp(H.toarray(), g, C.toarray(), lo, hi, lb, ub, dual_start=dual)


def _round_budget(size):
    """Active-set rounds (equality-QP solves) granted to the guesses of one QP before the
    interior-point fallback, which costs about as much as size/120 of them (measured on the
    scaling family of ``bench.constrained`` at n = 300 … 3000); between 3 and 12 (guesses that
    verify at all do so within 8 rounds there)."""
    return int(min(12, max(3, size // 120)))


def _active_at_zero(lo, hi, lb, ub, tol=1e-10):
    """The rows and bounds active at d = 0 (for the step QPs and shifted projections: the
    constraints active at the current point), as a guess."""

    def side(low, up):
        return np.where(
            np.abs(up) <= tol * (1.0 + np.abs(up)), 1, np.where(np.abs(low) <= tol * (1.0 + np.abs(low)), -1, 0)
        ).astype(np.int8)

    with np.errstate(invalid="ignore"):
        return side(lo, hi), side(lb, ub)


def _daqp(H, g, C, lo, hi, lb, ub, dual_start=None):
    n, m = g.size, C.shape[0]
    H = np.ascontiguousarray(H.toarray() if sp.issparse(H) else H, dtype=float)
    C = np.ascontiguousarray(C.toarray() if sp.issparse(C) else C, dtype=float).reshape(m, n)
    bl, bu = np.concatenate([lb, lo]), np.concatenate([ub, hi])
    sense = np.zeros(n + m, dtype=np.int32)
    sense[_is_equality(bl, bu)] = 5
    kwargs = {} if dual_start is None else {"dual_start": np.ascontiguousarray(dual_start, dtype=float)}
    x, _, flag, info = daqp.solve(0.5 * (H + H.T), g, C, bu, bl, sense, iter_limit=max(10000, 20 * (n + m)), **kwargs)
    x = np.asarray(x, dtype=float)
    if flag == -1:
        return QPResult(x, np.zeros(m), np.zeros(n), "infeasible", None, "daqp")
    if flag not in (1, 2):
        return QPResult(x, np.zeros(m), np.zeros(n), "failed", None, "daqp")
    lam = np.asarray(info["lam"], dtype=float)
    wb, w = lam[:n], lam[n:]
    active = (np.sign(w).astype(np.int8), np.sign(wb).astype(np.int8))
    return QPResult(x, w, wb, "optimal", active, "daqp")


def _piqp(H, g, C, lo, hi, lb, ub):
    """The active set of PIQP's solution (proximal interior point: one sparse LDLᵀ per iteration,
    bounds handled natively), a guess for :func:`_on_active_set`; None when PIQP does not solve the
    QP (an infeasible one is left to Clarabel, whose certificate is reported)."""
    n, m = g.size, C.shape[0]
    eq = _is_equality(lo, hi)
    solver = piqp.SparseSolver()
    solver.settings.verbose = False
    solver.settings.eps_abs = solver.settings.eps_rel = 1e-9
    csc = lambda M: sp.csc_matrix(M) if M.shape[0] else None
    P = sp.csc_matrix(sp.triu(0.5 * (H + H.T), format="csc"))
    Ce, Ci = C[eq], C[~eq]
    solver.setup(
        P,
        g,
        csc(Ce),
        lo[eq] if eq.any() else None,
        csc(Ci),
        lo[~eq] if Ci.shape[0] else None,
        hi[~eq] if Ci.shape[0] else None,
        lb,
        ub,
    )
    if solver.solve() != piqp.Status.PIQP_SOLVED:
        return None
    r = solver.result
    row_side, bound_side = np.zeros(m, dtype=np.int8), np.zeros(n, dtype=np.int8)
    row_side[eq] = 1
    rows = np.flatnonzero(~eq)
    row_side[rows] = np.where(
        np.asarray(r.z_u) > np.asarray(r.s_u), 1, np.where(np.asarray(r.z_l) > np.asarray(r.s_l), -1, 0)
    )
    bound_side[:] = np.where(
        np.asarray(r.z_bu) > np.asarray(r.s_bu), 1, np.where(np.asarray(r.z_bl) > np.asarray(r.s_bl), -1, 0)
    )
    return row_side, bound_side


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
    if not sp.issparse(H):
        return None
    if H.nnz <= H.shape[0]:
        coo = H.tocoo()
        if np.all(coo.row == coo.col):
            return H.diagonal()
    return None


_ROWS: Dict[int, Any] = {}  # id(C) -> (C, data): the rows' transposes and coordinates, kept for the last few C


def _rows_data(C):
    """(Cᵀ (a CSC view), row, column and value arrays of C, max(1, max|C|)) for a CSR ``C``;
    cached for the last few matrices seen (the polyhedron's rows come back at every projection)."""
    hit = _ROWS.get(id(C))
    if hit is not None and hit[0] is C:
        return hit[1]
    rows = np.repeat(np.arange(C.shape[0]), np.diff(C.indptr))
    data = (C.T, rows, C.indices, C.data, max(1.0, float(np.max(np.abs(C.data), initial=0.0))))
    if len(_ROWS) >= 4:
        del _ROWS[next(iter(_ROWS))]
    _ROWS[id(C)] = (C, data)
    return data


class _SparseQP:
    """One QP prepared for repeated equality-constrained solves on guessed active sets.

    The KKT matrix of a guess is assembled from the coordinate lists of H and C in a few array
    operations (no sparse slicing), with a tiny dual regularisation −δI on the row block (so that
    dependent active rows do not make it singular) that iterative refinement against the exact
    KKT system removes; it is factorised by :func:`scipy.sparse.linalg.splu` (SuperLU)."""

    def __init__(self, H, g, C, lo, hi, lb, ub):
        self.g, self.C = g, C
        self.lo, self.hi, self.lb, self.ub = lo, hi, lb, ub
        self.n, self.m = g.size, C.shape[0]
        self.hdiag = H if not sp.issparse(H) else _diagonal(H)
        self.H = None if self.hdiag is not None and not sp.issparse(H) else H
        if self.hdiag is None:
            Hc = H.tocoo()
            self.hr, self.hc, self.hv = Hc.row, Hc.col, Hc.data
        self.CT, self.cr, self.cc, self.cv, self.cmax = _rows_data(C)
        hmax = float(np.max(np.abs(self.hdiag if self.hdiag is not None else self.hv), initial=0.0))
        self.delta = 1e-13 * max(1.0, hmax)
        self.eq = _is_equality(lo, hi)
        self.fixed_var = lb == ub
        self.solves = 0  # equality-constrained solves so far
        self.hdiag_all = self.hdiag if self.hdiag is not None else H.diagonal()
        dense = np.diff(C.indptr) > max(64, self.n // 8)  # rows bordered in the KKT solves (few, long)
        self.dense_row = dense if dense.sum() <= 32 else np.zeros(self.m, dtype=bool)

    def hmul(self, x):
        """H x."""
        return self.hdiag * x if self.hdiag is not None else self.H @ x

    def matrix(self):
        """H as a sparse matrix."""
        return self.H if self.H is not None else sp.diags_array(self.hdiag, format="csc")

    def normalize(self, active):
        """A guessed active set (row sides, bound sides) made consistent with the QP: equalities and
        fixed variables active, no side that is infinite; None when the shapes do not match."""
        row_side, bound_side = (np.array(a, dtype=np.int8) for a in active)
        if row_side.shape != (self.m,) or bound_side.shape != (self.n,):
            return None
        row_side[self.eq] = 1
        bound_side[self.fixed_var] = 1
        row_side[((row_side > 0) & ~np.isfinite(self.hi)) | ((row_side < 0) & ~np.isfinite(self.lo))] = 0
        bound_side[((bound_side > 0) & ~np.isfinite(self.ub)) | ((bound_side < 0) & ~np.isfinite(self.lb))] = 0
        return row_side, bound_side

    def _kkt(self, free_mask, rows, reg, primal=0.0):
        """The sparse KKT matrix [[H_FF + diag(primal), C_RFᵀ], [C_RF, −reg·I]] of the free
        variables F and the rows R, assembled from coordinate lists (``primal``: only with a
        diagonal H)."""
        free = np.flatnonzero(free_mask)
        nf, nr = free.size, rows.size
        pos = np.full(self.n, -1)
        pos[free] = np.arange(nf)
        rpos = np.full(self.m, -1)
        rpos[rows] = nf + np.arange(nr)
        keep = (rpos[self.cr] >= 0) & free_mask[self.cc]
        ci, cj, cv = rpos[self.cr[keep]], pos[self.cc[keep]], self.cv[keep]
        if self.hdiag is not None:
            hr, hc, hv = np.arange(nf), np.arange(nf), self.hdiag[free] + primal
        else:
            keep = free_mask[self.hr] & free_mask[self.hc]
            hr, hc, hv = pos[self.hr[keep]], pos[self.hc[keep]], self.hv[keep]
        ri = nf + np.arange(nr)
        row = np.concatenate([hr, ci, cj, ri])
        col = np.concatenate([hc, cj, ci, ri])
        order = np.lexsort((row, col))  # CSC order (by column, then row); no duplicates by construction
        indptr = np.zeros(nf + nr + 1, dtype=np.int32)
        np.cumsum(np.bincount(col, minlength=nf + nr), out=indptr[1:])
        K = sp.csc_array(
            (np.concatenate([hv, cv, cv, np.full(nr, -reg)])[order], row[order].astype(np.int32), indptr),
            shape=(nf + nr, nf + nr),
        )
        K.has_canonical_format = True
        return K

    def eqp(self, row_side, bound_side):
        """The QP with the rows/bounds of the given sides held as equalities: (x, w, wb, Hx, Cᵀw,
        Hx + g + Cᵀw) from one factorisation and iterative refinement (not yet checked: see
        :func:`_on_active_set`), or None when the KKT matrix is singular."""
        n, m, lo, hi, lb, ub = self.n, self.m, self.lo, self.hi, self.lb, self.ub
        self.solves += 1
        rows = np.flatnonzero(row_side)
        free_mask = bound_side == 0
        free = np.flatnonzero(free_mask)
        nf, nr = free.size, rows.size
        x = np.where(bound_side > 0, ub, np.where(bound_side < 0, lb, 0.0))
        rhs_rows = np.where(row_side[rows] > 0, hi[rows], lo[rows])
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(rhs_rows))):
            return None
        w, wb = np.zeros(m), np.zeros(n)
        if nf + nr:
            sol = self._solve_kkt(x, free_mask, free, rows, rhs_rows)
            if sol is None:
                return None
            x[free], w[rows] = sol
        Hx, CTw = self.hmul(x), self.CT @ w
        grad = Hx + self.g + CTw  # gradient of the Lagrangian without the bound multipliers
        fixed = ~free_mask
        wb[fixed] = -grad[fixed]
        return x, w, wb, Hx, CTw, grad

    def _solve_kkt(self, x, free_mask, free, rows, rhs_rows):
        """(x_F, w_R) of the KKT system of the free variables F and active rows R (fixed variables'
        values already in x), or None when it is singular. Dense rows (a nonlinear constraint's
        gradient) are bordered: the sparse rows' KKT matrix K₀ is factorised alone and the dense
        rows enter through their k×k Schur complement (Z = K₀⁻¹Bᵀ: k extra solves), which keeps
        the factorisation as cheap as a projection's; iterative refinement against the full,
        unregularised system."""
        nf, delta = free.size, self.delta
        dense = self.dense_row[rows]
        flat = np.zeros(nf, dtype=bool)  # free variables of zero curvature (slacks): K₀ gets +δ there
        if dense.any():
            flat = self.hdiag_all[free] == 0
            if flat.any() and self.hdiag is None:
                dense[:] = False  # (a general H: no bordering)
                flat[:] = False
        rows_s, rows_d = rows[~dense], rows[dense]
        ns, k = rows_s.size, rows_d.size
        K = self._kkt(free_mask, rows_s, delta, flat * delta)
        lu = _factor(K)
        if lu is None:  # singular: H singular on the face
            return None
        Cx = self.C @ x
        a = np.concatenate([-(self.g + self.hmul(x))[free], rhs_rows[~dense] - Cx[rows_s]])
        b = rhs_rows[dense] - Cx[rows_d]
        if k:
            Bx = self.C[rows_d].toarray()[:, free]
            Z = lu.solve(np.vstack([Bx.T, np.zeros((ns, k))]))
            S = Bx @ Z[:nf] + delta * np.eye(k)

        def solve(ra, rb):
            t = lu.solve(ra)
            if not k:
                return t, np.zeros(0)
            y = np.linalg.solve(S, Bx @ t[:nf] - rb)
            return t - Z @ y, y

        u, y = solve(a, b)
        scale = 1.0 + max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)))
        for _ in range(3):  # refinement against the unregularised KKT system
            ra = a - K @ u
            ra[nf:] -= delta * u[nf:]
            ra[:nf] += flat * delta * u[:nf]
            rb = b.copy()
            if k:
                ra[:nf] -= Bx.T @ y
                rb -= Bx @ u[:nf]
            if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(rb))):
                return None
            if max(float(np.max(np.abs(ra), initial=0.0)), float(np.max(np.abs(rb), initial=0.0))) <= 1e-15 * scale:
                break
            du, dy = solve(ra, rb)
            u, y = u + du, y + dy
        if not (np.all(np.isfinite(u)) and np.all(np.isfinite(y))):
            return None
        wr = np.empty(rows.size)
        wr[~dense], wr[dense] = u[nf:], y
        return u[:nf], wr


def _factor(K):
    """SuperLU factorisation of a symmetric KKT matrix (symmetric mode, threshold pivoting 0.1),
    or None when it is singular. Ordering: minimum degree on KᵀK's symmetric pattern (MMD_AT_PLUS_A:
    about half COLAMD's fill on the scaling family's KKT matrices) unless a column is long (a dense
    row not bordered out), where minimum degree is slow and COLAMD is used."""
    long_column = K.shape[0] and int(np.max(np.diff(K.indptr))) > 64
    try:
        return splu(
            K,
            permc_spec="COLAMD" if long_column else "MMD_AT_PLUS_A",
            diag_pivot_thresh=0.1,
            options={"SymmetricMode": True},
        )
    except RuntimeError:
        return None


def _on_active_set(qp, active, rounds=12):
    """Primal–dual active-set iterations from a guessed active set (Hintermüller, Ito & Kunisch,
    SIAM J. Optim. 13, 2003): solve the QP on the guess; add every violated row/bound on the
    violated side, drop every row/bound whose multiplier has the wrong sign; repeat at most
    ``rounds`` times (or until an active set repeats). Returns the result only once it satisfies
    every KKT condition of the full QP (then it is the optimum, exactly): the active rows hold, the
    gradient of the Lagrangian vanishes on the free variables, no row or bound is violated and
    every multiplier has the right sign (relative tolerances FEAS_TOL, SIGN_TOL); else None."""
    lo, hi, lb, ub, g = qp.lo, qp.hi, qp.lb, qp.ub, qp.g
    active = qp.normalize(active)
    if active is None:
        return None
    row_side, bound_side = active
    eq, fixed_var = qp.eq, qp.fixed_var
    seen = set()
    gmax = float(np.max(np.abs(g), initial=0.0))
    fewest, since = None, 0  # fewest changes of a round so far, rounds since then
    for _ in range(rounds):
        key = row_side.tobytes() + bound_side.tobytes()
        if key in seen or since >= STALL_ROUNDS:
            return None  # cycling, or no round has come closer for a while
        seen.add(key)
        sol = qp.eqp(row_side, bound_side)
        if sol is None:
            return None
        x, w, wb, Hx, CTw, grad = sol
        scale_x = 1.0 + float(np.max(np.abs(x), initial=0.0))
        Cx = qp.C @ x
        tol_r = FEAS_TOL * (1.0 + np.abs(Cx)) * qp.cmax
        rhs = np.where(row_side > 0, hi, np.where(row_side < 0, lo, Cx))
        bad = np.abs(Cx - rhs) > tol_r
        if bad.any():
            # active rows that the active bounds leave no freedom to satisfy (dependent rows on fixed
            # variables): the rows win, their variables' bounds are released for the next round
            # (per row, the bound with the smallest multiplier)
            released = False
            for i in np.flatnonzero(bad):
                cols = qp.C.indices[qp.C.indptr[i] : qp.C.indptr[i + 1]]
                cols = cols[(bound_side[cols] != 0) & ~fixed_var[cols]]
                if cols.size:
                    bound_side[cols[np.argmin(np.abs(wb[cols]))]] = 0
                    released = True
            if not released:
                return None
            continue
        stat = grad[bound_side == 0]
        size = 1.0 + gmax + float(np.max(np.abs(Hx), initial=0.0)) + float(np.max(np.abs(CTw), initial=0.0))
        if np.any(np.abs(stat) > SIGN_TOL * size):
            return None  # the KKT system was not solved to round-off
        up_r, dn_r = (Cx > hi + tol_r) & (row_side == 0), (Cx < lo - tol_r) & (row_side == 0)
        up_b = (x > ub + FEAS_TOL * scale_x) & (bound_side == 0)
        dn_b = (x < lb - FEAS_TOL * scale_x) & (bound_side == 0)
        wscale = 1.0 + gmax + float(np.max(np.abs(w), initial=0.0)) + float(np.max(np.abs(wb), initial=0.0))
        wrong_r = ~eq & (w * row_side < -SIGN_TOL * wscale)
        wrong_b = ~fixed_var & (wb * bound_side < -SIGN_TOL * wscale)
        if not (up_r.any() or dn_r.any() or up_b.any() or dn_b.any() or wrong_r.any() or wrong_b.any()):
            return QPResult(np.clip(x, lb, ub), w, wb, "optimal", (row_side, bound_side), "active set")
        changes = int(up_r.sum() + dn_r.sum() + up_b.sum() + dn_b.sum() + wrong_r.sum() + wrong_b.sum())
        fewest, since = (changes, 0) if fewest is None or changes < fewest else (fewest, since + 1)
        row_side[up_r], row_side[dn_r], row_side[wrong_r] = 1, -1, 0
        bound_side[up_b], bound_side[dn_b], bound_side[wrong_b] = 1, -1, 0
    return None
