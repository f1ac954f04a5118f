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
    warm = [] if warm is None else (list(warm) if isinstance(warm, list) else [warm])
    generic = [  # built only when reached
        lambda: _active_at_zero(lo, hi, lb, ub),
        lambda: (np.zeros(m, dtype=np.int8), np.zeros(n, dtype=np.int8)),
    ]
    budget, limit, tried = _round_budget(n + m), _change_limit(n + m), set()
    for k, guess in enumerate(warm + generic):
        if qp.solves >= budget or (qp.far_off and (k >= len(warm) or budget < 6)):
            break  # once a guess was far off: no generic guesses, and no more at all on a small budget
        guess = guess() if callable(guess) else guess
        guess = None if guess is None else qp.normalize(guess)
        if guess is None or guess[0].tobytes() + guess[1].tobytes() in tried:
            continue
        tried.add(guess[0].tobytes() + guess[1].tobytes())
        rounds = budget - qp.solves if len(tried) == 1 else min(3, budget - qp.solves)
        res = _on_active_set(qp, guess, rounds=rounds, max_changes=limit)
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


def _change_limit(size):
    """Most sides (rows and bounds) a round of a guess may change before the guess is given up for
    the interior-point back end: a tenth of them, at least 8. On the scaling family of
    ``bench.constrained`` (n = 300 … 3000) every guess that verified changed fewer in every round
    but one (n = 1000: 417, then 177, 47, …, 0 in 8 rounds, where PIQP is cheaper), and most that
    did not verify changed more in their first or second round."""
    return max(8, size // 10)


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


def _select_rows(C, mask):
    """The rows of a CSR ``C`` where ``mask`` holds, as a CSC matrix (PIQP's input type), or None
    when there are none; the rows are gathered with array operations (no sparse fancy indexing)."""
    rows = np.flatnonzero(mask)
    if not rows.size:
        return None
    counts = np.diff(C.indptr)[rows]
    indptr = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    take = np.repeat(C.indptr[rows] - indptr[:-1], counts) + np.arange(indptr[-1])
    return sp.csc_matrix(sp.csr_matrix((C.data[take], C.indices[take], indptr), shape=(rows.size, C.shape[1])))


def _upper_triangle(H):
    """The upper triangle of ½(H + Hᵀ) as a CSC matrix (a diagonal H: built directly)."""
    diag = _diagonal(H)
    if diag is not None:
        idx = np.arange(diag.size + 1, dtype=np.int32)
        return sp.csc_matrix((diag, idx[:-1], idx), shape=H.shape)
    return sp.csc_matrix(sp.triu(0.5 * (H + H.T), format="csc"))


def _piqp(H, g, C, lo, hi, lb, ub):
    """The active set of PIQP's solution (proximal interior point: one sparse LDLᵀ per iteration,
    bounds handled natively), a guess for :func:`_on_active_set`; None when PIQP does not solve the
    QP (an infeasible one is left to Clarabel, whose certificate is reported). ``C``: CSR."""
    m = C.shape[0]
    eq = _is_equality(lo, hi)
    ineq = ~eq
    solver = piqp.SparseSolver()
    solver.settings.verbose = False
    solver.settings.eps_abs = solver.settings.eps_rel = 1e-9
    Ce, Ci = _select_rows(C, eq), _select_rows(C, ineq)
    solver.setup(
        _upper_triangle(H),
        g,
        Ce,
        None if Ce is None else lo[eq],
        Ci,
        None if Ci is None else lo[ineq],
        None if Ci is None else hi[ineq],
        lb,
        ub,
    )
    if solver.solve() != piqp.Status.PIQP_SOLVED:
        return None
    r = solver.result
    side = lambda z_u, s_u, z_l, s_l: np.where(  # noqa: E731 - the larger of each complementary pair
        np.asarray(z_u) > np.asarray(s_u), 1, np.where(np.asarray(z_l) > np.asarray(s_l), -1, 0)
    ).astype(np.int8)
    row_side = np.ones(m, dtype=np.int8)
    row_side[ineq] = side(r.z_u, r.s_u, r.z_l, r.s_l)
    return row_side, side(r.z_bu, r.s_bu, r.z_bl, r.s_bl)


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


_ROWS: Dict[int, Any] = {}  # id(C) -> (C, data): a CSR C's coordinates, kept for the last few C
_PATTERNS: Dict[bytes, Any] = {}  # KKT patterns of diagonal-H QPs by their rows' content, the last few


def _remember(cache, key, value, size=4):
    """Put ``value`` into a small least-recently-used ``cache`` (each step a single dict operation,
    so solves in several threads at once can only evict each other's entries, never fail)."""
    cache.pop(key, None)
    while len(cache) >= size:
        try:
            cache.pop(next(iter(cache)), None)
        except (StopIteration, RuntimeError):  # emptied or changed by another thread meanwhile
            break
    cache[key] = value
    return value


def _rows_data(C):
    """(Cᵀ (a CSC view), row, column and value arrays of C, max(1, max|C|)) for a CSR ``C``;
    cached for the last few matrices seen (the polyhedron's rows come back at every projection)."""
    hit = _ROWS.get(id(C))
    if hit is not None and hit[0] is C:
        return _remember(_ROWS, id(C), hit)[1]
    rows = np.repeat(np.arange(C.shape[0], dtype=np.int32), np.diff(C.indptr))
    cols = C.indices.astype(np.int32, copy=False)
    data = (C.T, rows, cols, C.data, max(1.0, float(np.max(np.abs(C.data), initial=0.0))))
    return _remember(_ROWS, id(C), (C, data))[1]


class _KKTPattern:
    """The KKT matrix of *every* variable and row, [[H, Cᵀ], [C, −δI]] (size n + m), in CSC order
    (by column, then row), its H entries and δ left to each QP (:meth:`values`). The KKT matrix of
    a guess (free variables F, active rows R) is its principal submatrix on F ∪ (n + R): the
    entries whose row and column are both kept, relabelled by a monotone map, which keeps them in
    CSC order — no sorting per guess. Rows in ``skip`` (bordered out) contribute only their −δ."""

    def __init__(self, n, m, hr, hc, cr, cc, cv, skip=None):
        size = n + m
        if skip is not None and skip.any():
            on = ~skip[cr]
            cr, cc, cv = cr[on], cc[on], cv[on]
        ri = n + np.arange(m, dtype=np.int32)
        row = np.concatenate([hr, n + cr, cc, ri]).astype(np.int32, copy=False)
        col = np.concatenate([hc, cc, n + cr, ri]).astype(np.int32, copy=False)
        order = np.lexsort((row, col))  # no duplicates by construction
        self.row, self.col = row[order], col[order]
        self.data = np.concatenate([np.zeros(hr.size), cv, cv, np.zeros(m)])[order]
        self.indptr = np.zeros(size + 1, dtype=np.int64)
        np.cumsum(np.bincount(col, minlength=size), out=self.indptr[1:])
        where = np.empty(order.size, dtype=np.int64)  # where the entries of the lists went
        where[order] = np.arange(order.size)
        self.h_at, self.r_at = where[: hr.size], where[order.size - m :]

    def values(self, hv, delta):
        """The pattern's values with H's entries ``hv`` (in the order of its coordinate lists) and δ."""
        data = self.data.copy()
        data[self.h_at] = hv
        data[self.r_at] = -delta
        return data

    def submatrix(self, data, keep, diag_shift_at=None, delta=0.0):
        """K (values ``data``) restricted to ``keep`` (bool, size n + m), as a CSC array;
        ``diag_shift_at``: positions in H's coordinate lists (all kept) whose entries get +``delta``."""
        ek = keep[self.row] & keep[self.col]
        before = np.zeros(self.row.size + 1, dtype=np.int64)
        np.cumsum(ek, out=before[1:])
        label = np.cumsum(keep, dtype=np.int32) - 1
        data = data[ek]
        if diag_shift_at is not None and diag_shift_at.size:
            data[before[self.h_at[diag_shift_at]]] += delta
        kept = np.flatnonzero(keep)
        indptr = np.append(before[self.indptr[kept]], before[-1]).astype(np.int32)
        K = sp.csc_array((data, label[self.row[ek]], indptr), shape=(kept.size, kept.size))
        K.has_canonical_format = True
        return K


def _diagonal_pattern(n, m, cr, cc, cv, skip):
    """The :class:`_KKTPattern` of a diagonal H (every diagonal entry present) and these rows
    (``skip``: rows bordered out), cached by the content of the rows kept: the step QPs of
    successive iterations share the polyhedron's rows (their bordered rows, ∇h, change), in a new
    matrix each time."""
    if skip.any():
        on = ~skip[cr]
        cr, cc, cv = cr[on], cc[on], cv[on]
    sizes = np.array([n, m], dtype=np.int64)
    key = b"".join([sizes.tobytes(), cr.tobytes(), cc.tobytes(), cv.tobytes()])
    hit = _PATTERNS.get(key)
    if hit is not None:
        return _remember(_PATTERNS, key, hit)
    idx = np.arange(n, dtype=np.int32)
    return _remember(_PATTERNS, key, _KKTPattern(n, m, idx, idx, cr, cc, cv))


class _SparseQP:
    """One QP prepared for repeated equality-constrained solves on guessed active sets.

    The KKT matrix of a guess is a principal submatrix of the KKT pattern of all variables and
    rows (:class:`_KKTPattern`, built once per QP, or reused for the same rows with a diagonal H),
    extracted in a few array operations (no sparse slicing, no sorting), with a tiny dual
    regularisation −δI on the row block (so that dependent active rows do not make it singular)
    that iterative refinement against the exact KKT system removes; it is factorised by
    :func:`scipy.sparse.linalg.splu` (SuperLU)."""

    def __init__(self, H, g, C, lo, hi, lb, ub):
        self.g, self.C = g, C
        self.lo, self.hi, self.lb, self.ub = lo, hi, lb, ub
        self.n, self.m = g.size, C.shape[0]
        self.hdiag = H if not sp.issparse(H) else _diagonal(H)
        self.H = None if self.hdiag is not None and not sp.issparse(H) else H
        self.CT, self.cr, self.cc, self.cv, self.cmax = _rows_data(C)
        self.hv = self.hdiag
        if self.hdiag is None:
            Hc = H.tocoo()
            self.hr, self.hc, self.hv = Hc.row, Hc.col, Hc.data
        self.delta = 1e-13 * max(1.0, float(np.max(np.abs(self.hv), initial=0.0)))
        self.eq = _is_equality(lo, hi)
        self.fixed_var = lb == ub
        self.solves = 0  # equality-constrained solves so far
        self.far_off = False  # whether a guess changed more than its limit of sides in a round
        self.hdiag_all = self.hdiag if self.hdiag is not None else H.diagonal()
        dense = np.diff(C.indptr) > max(64, self.n // 8)  # rows bordered in the KKT solves (few, long)
        self.dense_row = dense if dense.sum() <= 32 else np.zeros(self.m, dtype=bool)
        if self.dense_row.any():  # the bordered rows as dense arrays (row i of C at dense_at[i])
            idx = np.flatnonzero(self.dense_row)
            self.dense_at = np.full(self.m, -1)
            self.dense_at[idx] = np.arange(idx.size)
            self.dense_rows = np.zeros((idx.size, self.n))
            for k, i in enumerate(idx):
                span = slice(C.indptr[i], C.indptr[i + 1])
                self.dense_rows[k, C.indices[span]] = C.data[span]
        self._patterns = {}  # dense rows bordered out (True) or not (False) -> (pattern, its values)

    def pattern(self, bordered):
        """(KKT pattern, values) with the dense rows bordered out or not (built when first needed)."""
        hit = self._patterns.get(bordered)
        if hit is None:
            skip = self.dense_row if bordered else np.zeros(self.m, dtype=bool)
            if self.hdiag is not None:
                pattern = _diagonal_pattern(self.n, self.m, self.cr, self.cc, self.cv, skip)
            else:
                pattern = _KKTPattern(self.n, self.m, self.hr, self.hc, self.cr, self.cc, self.cv, skip)
            hit = self._patterns[bordered] = (pattern, pattern.values(self.hv, self.delta))
        return hit

    def hmul(self, x):
        """H x."""
        return self.hdiag * x if self.hdiag is not None else self.H @ x

    def matrix(self):
        """H as a sparse (CSC) matrix."""
        if self.H is not None:
            return self.H
        idx = np.arange(self.n + 1, dtype=np.int32)
        return sp.csc_array((self.hdiag.copy(), idx[:-1], idx), shape=(self.n, self.n))

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
        if not (np.isfinite(x).all() and np.isfinite(rhs_rows).all()):
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
        n, nf, delta = self.n, free.size, self.delta
        dense = self.dense_row[rows]
        flat = None  # free variables of zero curvature (slacks): K₀ gets +δ there
        bordered = True
        if dense.any():
            flat = free[self.hdiag_all[free] == 0]
            if flat.size and self.hdiag is None:
                dense[:] = False  # (a general H: no bordering)
                flat, bordered = None, False
        rows_s, rows_d = rows[~dense], rows[dense]
        ns, k = rows_s.size, rows_d.size
        keep = np.zeros(n + self.m, dtype=bool)
        keep[:n] = free_mask
        keep[n + rows_s] = True
        pattern, values = self.pattern(bordered)
        K = pattern.submatrix(values, keep, flat, delta)  # (with a diagonal H, H's list is its diagonal)
        lu = _factor(K)
        if lu is None:  # singular: H singular on the face
            return None
        Cx = self.C @ x
        a = np.concatenate([-(self.g + self.hmul(x))[free], rhs_rows[~dense] - Cx[rows_s]])
        b = rhs_rows[dense] - Cx[rows_d]
        shift = np.zeros(nf)
        if flat is not None and flat.size:
            shift[np.searchsorted(free, flat)] = delta
        if k:
            Bx = self.dense_rows[self.dense_at[rows_d]][:, free]
            Z = lu.solve(np.vstack([Bx.T, np.zeros((ns, k))]))
            S = Bx @ Z[:nf] + delta * np.eye(k)

        def solve(ra, rb):
            t = lu.solve(ra)
            if not k:
                return t, np.zeros(0)
            r = Bx @ t[:nf] - rb
            y = r / S[0, 0] if k == 1 else np.linalg.solve(S, r)  # (the same division LAPACK does)
            return t - Z @ y, y

        u, y = solve(a, b)
        scale = 1.0 + max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)))
        for _ in range(3):  # refinement against the unregularised KKT system
            ra = a - K @ u
            ra[nf:] -= delta * u[nf:]
            ra[:nf] += shift * u[:nf]
            rb = b.copy()
            if k:
                ra[:nf] -= Bx.T @ y
                rb -= Bx @ u[:nf]
            err = max(float(np.max(np.abs(ra), initial=0.0)), float(np.max(np.abs(rb), initial=0.0)))
            if not np.isfinite(err):
                return None
            if err <= 1e-15 * scale:
                break
            du, dy = solve(ra, rb)
            u, y = u + du, y + dy
        if not (np.isfinite(u).all() and np.isfinite(y).all()):
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


def _on_active_set(qp, active, rounds=12, max_changes=None):
    """Primal–dual active-set iterations from a guessed active set (Hintermüller, Ito & Kunisch,
    SIAM J. Optim. 13, 2003): solve the QP on the guess; add every violated row/bound on the
    violated side, drop every row/bound whose multiplier has the wrong sign; repeat at most
    ``rounds`` times (or until an active set repeats, no round has come closer for
    :data:`STALL_ROUNDS` rounds, or a round would change more than ``max_changes`` sides: then
    the guess was far off and an interior-point solve is cheaper). Returns the result only once
    it satisfies every KKT condition of the full QP (then it is the optimum, exactly): the active
    rows hold, the gradient of the Lagrangian vanishes on the free variables, no row or bound is
    violated and every multiplier has the right sign (relative tolerances FEAS_TOL, SIGN_TOL);
    else None."""
    lo, hi, lb, ub, g = qp.lo, qp.hi, qp.lb, qp.ub, qp.g
    active = qp.normalize(active)
    if active is None:
        return None
    row_side, bound_side = active
    not_eq, not_fixed = ~qp.eq, ~qp.fixed_var
    seen = set()
    gmax = float(np.abs(g).max(initial=0.0))
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
        Cx = qp.C @ x
        tol_r = FEAS_TOL * qp.cmax * (1.0 + np.abs(Cx))
        row_free = row_side == 0
        rhs = np.where(row_side > 0, hi, np.where(row_side < 0, lo, Cx))
        bad = np.abs(Cx - rhs) > tol_r
        if bad.any():
            # active rows that the active bounds leave no freedom to satisfy (dependent rows on fixed
            # variables): the rows win, their variables' bounds are released for the next round
            # (per row, the bound with the smallest multiplier)
            released = False
            for i in np.flatnonzero(bad):
                cols = qp.C.indices[qp.C.indptr[i] : qp.C.indptr[i + 1]]
                cols = cols[(bound_side[cols] != 0) & not_fixed[cols]]
                if cols.size:
                    bound_side[cols[np.argmin(np.abs(wb[cols]))]] = 0
                    released = True
            if not released:
                return None
            continue
        bound_free = bound_side == 0
        size = 1.0 + gmax + float(np.abs(Hx).max(initial=0.0)) + float(np.abs(CTw).max(initial=0.0))
        if float(np.abs(grad[bound_free]).max(initial=0.0)) > SIGN_TOL * size:
            return None  # the KKT system was not solved to round-off
        tol_x = FEAS_TOL * (1.0 + float(np.abs(x).max(initial=0.0)))
        wtol = SIGN_TOL * (1.0 + gmax + float(np.abs(w).max(initial=0.0)) + float(np.abs(wb).max(initial=0.0)))
        up_r, dn_r = row_free & (Cx > hi + tol_r), row_free & (Cx < lo - tol_r)
        up_b, dn_b = bound_free & (x > ub + tol_x), bound_free & (x < lb - tol_x)
        wrong_r = not_eq & (w * row_side < -wtol)
        wrong_b = not_fixed & (wb * bound_side < -wtol)
        changes = sum(int(np.count_nonzero(v)) for v in (up_r, dn_r, up_b, dn_b, wrong_r, wrong_b))
        if not changes:
            return QPResult(np.clip(x, lb, ub), w, wb, "optimal", (row_side, bound_side), "active set")
        if max_changes is not None and changes > max_changes:
            qp.far_off = True
            return None
        fewest, since = (changes, 0) if fewest is None or changes < fewest else (fewest, since + 1)
        row_side[up_r], row_side[dn_r], row_side[wrong_r] = 1, -1, 0
        bound_side[up_b], bound_side[dn_b], bound_side[wrong_b] = 1, -1, 0
    return None
