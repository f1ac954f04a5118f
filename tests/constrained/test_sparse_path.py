"""The sparse path of the constrained solver against slow obvious references: QPs from guessed
active sets (every back end and guess route) against DAQP and the KKT conditions, the cheap
bounds on the stationarity measure against the projection itself, the deferred E_m against
computing it at every point (same decisions, same iterates), and a scaling-family problem
solved on the sparse path against the same problem on the dense (DAQP) path."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, NonlinearConstraint

from bench.constrained.scaling import scaling_problem
from tests.constrained.test_qp import assert_kkt, random_qp
from zeroth.constrained import _qp, minimize
from zeroth.constrained._qp import _on_active_set, _SparseQP, solve_qp
from zeroth.constrained.npasa import _stack_rows
from zeroth.constrained.polyhedron import Polyhedron


def sparse_qp(rng, n, m):
    """A strictly convex QP with a diagonal H, sparse rows (some equalities) and bounds, feasible."""
    d = 10.0 ** rng.uniform(-1, 1, n)
    C = sp.random(m, n, density=min(1.0, 4.0 / n), random_state=rng, format="csr")
    x0 = rng.uniform(-1, 1, n)
    c0 = C @ x0
    lo, hi = c0 - rng.uniform(0, 0.5, m), c0 + rng.uniform(0, 0.5, m)
    eq = rng.random(m) < 0.2
    lo[eq] = hi[eq] = c0[eq]
    lo[rng.random(m) < 0.3] = -np.inf
    lb, ub = x0 - rng.uniform(0, 1, n), x0 + rng.uniform(0, 1, n)
    g = rng.normal(scale=5.0, size=n)  # far outside: many bounds and rows active
    return d, g, C, lo, hi, lb, ub


@pytest.mark.parametrize("seed", range(12))
def test_diagonal_h_matches_the_matrix_and_daqp(seed):
    rng = np.random.default_rng(seed)
    d, g, C, lo, hi, lb, ub = sparse_qp(rng, int(rng.integers(5, 60)), int(rng.integers(1, 30)))
    ref = solve_qp(np.diag(d), g, C.toarray(), lo, hi, lb, ub, method="daqp")
    for H in (d, sp.diags_array(d, format="csc")):
        res = solve_qp(H, g, C, lo, hi, lb, ub)
        assert res.status == "optimal"
        assert_kkt(np.diag(d), g, C.toarray(), lo, hi, lb, ub, res)
        assert np.allclose(res.x, ref.x, atol=1e-8)


@pytest.mark.parametrize("seed", range(12))
def test_interior_point_route_is_verified(seed, monkeypatch):
    # no guess verifies (zero rounds granted): PIQP's active set, polished and KKT-checked, or Clarabel's
    monkeypatch.setattr(_qp, "_round_budget", lambda size: 0)
    rng = np.random.default_rng(100 + seed)
    H, g, C, lo, hi, lb, ub = random_qp(rng, int(rng.integers(2, 25)), int(rng.integers(0, 15)))
    ref = solve_qp(H, g, C, lo, hi, lb, ub, method="daqp")
    res = solve_qp(sp.csc_array(H), g, sp.csr_array(C), lo, hi, lb, ub)
    assert res.status == "optimal" and res.solver == "piqp + active set"
    assert_kkt(H, g, C, lo, hi, lb, ub, res)
    assert np.allclose(res.x, ref.x, atol=1e-8)


def test_rows_on_fixed_variables_release_a_bound():
    # guess: both variables at their upper bound 1 and the row x0 + x1 = 1.5 active — inconsistent;
    # the row wins, one bound is released, and the next round is the optimum
    qp = _SparseQP(
        np.ones(2),
        np.array([-5.0, -4.0]),
        sp.csr_array(np.array([[1.0, 1.0]])),
        np.array([1.5]),
        np.array([1.5]),
        np.zeros(2),
        np.ones(2),
    )
    res = _on_active_set(qp, (np.array([1], dtype=np.int8), np.array([1, 1], dtype=np.int8)))
    ref = solve_qp(
        np.eye(2),
        np.array([-5.0, -4.0]),
        np.array([[1.0, 1.0]]),
        np.array([1.5]),
        np.array([1.5]),
        np.zeros(2),
        np.ones(2),
        method="daqp",
    )
    assert res is not None and np.allclose(res.x, ref.x, atol=1e-12)


def test_infeasible_sparse_qp_is_never_optimal():
    H, g = np.ones(3), np.zeros(3)
    C = sp.csr_array(np.array([[1.0, 1.0, 1.0]]))
    for warm in (None, (np.array([1], dtype=np.int8), np.array([1, 1, 1], dtype=np.int8))):
        res = solve_qp(H, g, C, np.array([4.0]), np.array([np.inf]), np.zeros(3), np.ones(3), warm=warm)
        assert res.status == "infeasible"


def test_stack_rows_matches_vstack():
    rng = np.random.default_rng(0)
    J = rng.normal(size=(3, 7))
    J[1] = 0.0
    J[2, ::2] = 0.0
    A = sp.random(5, 7, density=0.4, random_state=1, format="csr")
    for A_ in (A, A.toarray(), sp.csr_array((0, 7))):
        out = _stack_rows(J, A_)
        assert isinstance(out, sp.csr_array)
        assert np.array_equal(out.toarray(), np.vstack([J, A_.toarray() if sp.issparse(A_) else A_]))


@pytest.mark.parametrize("seed", range(8))
def test_projection_bounds_bracket_the_projection(seed):
    rng = np.random.default_rng(seed)
    n, m = 30, 8
    A = sp.random(m, n, density=0.1, random_state=rng, format="csr")
    z = rng.uniform(-1, 1, n)
    Az = A @ z
    lb, ub = z - rng.uniform(0, 1, n), z + rng.uniform(0, 1, n)
    lb[rng.random(n) < 0.2] = -np.inf
    poly = Polyhedron(lb, ub, A, Az - rng.uniform(0, 1, m), Az + rng.uniform(0, 1, m))
    for scale in (1e-3, 1.0, 1e3):
        v = rng.normal(scale=scale, size=n)
        exact = float(np.max(np.abs(poly.project_step(z, v))))
        lower, upper = poly.projection_bounds(z, v)
        assert lower <= exact * (1 + 1e-12) + 1e-15 and exact <= upper * (1 + 1e-12) + 1e-15


def scaling_args(p, dense=False):
    A_eq, A_in = (p.A_eq.toarray(), p.A_in.toarray()) if dense else (p.A_eq, p.A_in)
    bounds = Bounds(-np.ones(p.n), np.ones(p.n))
    cons = [
        LinearConstraint(A_eq, p.b_eq, p.b_eq),
        LinearConstraint(A_in, -np.inf, p.b_in),
        NonlinearConstraint(p.ball, -np.inf, p.r2, jac=p.ball_jac, hess=p.ball_hess),
    ]
    return dict(jac=p.grad, hess=p.hess, bounds=bounds, constraints=cons)


def test_scaling_problem_sparse_path_matches_dense_path():
    p = scaling_problem(60)
    sparse = minimize(p.fun, p.x0, **scaling_args(p))
    dense = minimize(p.fun, p.x0, **scaling_args(p, dense=True))  # N + rows <= DENSE_LIMIT: DAQP, eigen-flips
    assert sparse.success and dense.success
    assert np.allclose(sparse.x, dense.x, atol=1e-6)
    assert sparse.fun == pytest.approx(dense.fun, rel=1e-9)
    assert p.violation(sparse.x) <= 1e-8


def test_deferred_stationarity_takes_the_same_decisions(monkeypatch):
    # E_m computed at every point (the "bounds" are the projection itself) against the deferred run
    p = scaling_problem(200)
    deferred = minimize(p.fun, p.x0, **scaling_args(p))

    def exact(self, z, v):
        e = float(np.max(np.abs(self.project_step(z, v)), initial=0.0))
        return e, e

    monkeypatch.setattr(Polyhedron, "projection_bounds", exact)
    eager = minimize(p.fun, p.x0, **scaling_args(p))
    assert deferred.success and eager.success
    key = lambda res: [(h["phase"], h.get("step"), h.get("accept"), h["E_c"]) for h in res.phase_history]
    assert key(deferred) == key(eager)
    assert np.array_equal(deferred.x, eager.x)
    assert all(h["E_m"] is not None for h in eager.phase_history)
    assert any(h["E_m"] is None for h in deferred.phase_history)  # some projections were skipped


def bordered_qp(rng, n, m):
    """A step-QP-like problem around a feasible point xf: one dense (bordered) equality row on top
    of sparse rows (some equalities), bounds, a diagonal H with one zero-curvature variable (a
    slack). Returns (d, g, C, lo, hi, lb, ub, xf)."""
    d = 10.0 ** rng.uniform(-1, 1, n)
    d[-1] = 0.0
    xf = rng.uniform(-1, 1, n)
    sparse = sp.random(m, n, density=4.0 / n, random_state=rng, format="csr")
    C = sp.vstack([sp.csr_array(rng.normal(size=(1, n))), sparse], format="csr")
    c0 = C @ xf
    lo, hi = c0 - rng.uniform(0, 0.5, m + 1), c0 + rng.uniform(0, 0.5, m + 1)
    eq = rng.random(m + 1) < 0.2
    eq[0] = True
    lo[eq] = hi[eq] = c0[eq]
    lb, ub = xf - rng.uniform(0, 1, n), xf + rng.uniform(0, 1, n)
    return d, rng.normal(scale=5.0, size=n), C, lo, hi, lb, ub, xf


@pytest.mark.parametrize("seed", range(8))
def test_cached_kkt_patterns_follow_changed_values(seed):
    # the same sparse rows come back with a new dense row, a new diagonal H and new row values: a
    # pattern reused from the cache must carry the new values (each result against DAQP and KKT)
    rng = np.random.default_rng(300 + seed)
    n, m = 150, 30
    d, g, C, lo, hi, lb, ub, xf = bordered_qp(rng, n, m)
    assert _SparseQP(d, g, C, lo, hi, lb, ub).dense_row[0]  # the first row is bordered out
    for change in ("none", "dense row", "diagonal", "sparse values"):
        C2, d2 = C.copy(), d.copy()
        if change == "dense row":
            C2.data[: C2.indptr[1]] = rng.normal(size=C2.indptr[1])
        elif change == "diagonal":
            d2[:-1] = 10.0 ** rng.uniform(-1, 1, n - 1)
        elif change == "sparse values":
            C2.data[C2.indptr[1] :] *= rng.uniform(0.5, 2.0, C2.nnz - C2.indptr[1])
        shift = (C2 - C) @ xf  # the rows moved with their values: xf stays feasible
        lo2, hi2 = lo + shift, hi + shift
        ref = solve_qp(np.diag(d2) + 1e-12 * np.eye(n), g, C2.toarray(), lo2, hi2, lb, ub, method="daqp")
        res = solve_qp(d2, g, C2, lo2, hi2, lb, ub)
        assert res.status == "optimal", change
        assert_kkt(np.diag(d2), g, C2.toarray(), lo2, hi2, lb, ub, res)
        assert np.allclose(res.x, ref.x, atol=1e-6), change


@pytest.mark.parametrize("seed", range(8))
def test_a_far_off_guess_is_given_up_and_the_result_is_still_exact(seed):
    rng = np.random.default_rng(400 + seed)
    d, g, C, lo, hi, lb, ub = sparse_qp(rng, 400, 60)
    wrong = (np.zeros(60, dtype=np.int8), np.ones(400, dtype=np.int8))  # every bound at its upper side
    qp = _SparseQP(d, g, C, lo, hi, lb, ub)
    assert _on_active_set(qp, wrong, rounds=12, max_changes=_qp._change_limit(460)) is None and qp.far_off
    ref = solve_qp(np.diag(d), g, C.toarray(), lo, hi, lb, ub, method="daqp")
    res = solve_qp(d, g, C, lo, hi, lb, ub, warm=wrong)
    assert res.status == "optimal"
    assert_kkt(np.diag(d), g, C.toarray(), lo, hi, lb, ub, res)
    assert np.allclose(res.x, ref.x, atol=1e-8)


@pytest.mark.parametrize("seed", range(6))
def test_general_h_with_a_flat_variable_puts_the_dense_row_into_the_kkt_matrix(seed, monkeypatch):
    # a non-diagonal H with a zero-curvature variable: no bordering (the full pattern); against DAQP
    asked = []
    pattern = _SparseQP.pattern
    monkeypatch.setattr(_SparseQP, "pattern", lambda self, bordered: asked.append(bordered) or pattern(self, bordered))
    rng = np.random.default_rng(500 + seed)
    n, m = 140, 20
    d, g, C, lo, hi, lb, ub, _ = bordered_qp(rng, n, m)
    H = np.diag(d)
    H[0, 1] = H[1, 0] = 0.1 * min(d[0], d[1])
    ref = solve_qp(H + 1e-12 * np.eye(n), g, C.toarray(), lo, hi, lb, ub, method="daqp")
    res = solve_qp(sp.csc_array(H), g, C, lo, hi, lb, ub)
    assert False in asked  # some round factorised the dense row with the others
    assert res.status == "optimal"
    assert_kkt(H, g, C.toarray(), lo, hi, lb, ub, res)
    assert np.allclose(res.x, ref.x, atol=1e-6)


def test_solves_in_threads_share_the_caches_safely():
    # the row and KKT-pattern caches are module-wide: solves in several threads at once give the
    # results of solving one after another, bitwise
    from concurrent.futures import ThreadPoolExecutor

    def solve(seed):
        p = scaling_problem(120, seed=seed)
        lin = [LinearConstraint(p.A_eq, p.b_eq, p.b_eq), LinearConstraint(p.A_in, -np.inf, p.b_in)]
        ball = NonlinearConstraint(p.ball, -np.inf, p.r2, jac=p.ball_jac, hess=p.ball_hess)
        bounds = Bounds(-np.ones(p.n), np.ones(p.n))
        return minimize(p.fun, p.x0, jac=p.grad, hess=p.hess, bounds=bounds, constraints=lin + [ball])

    alone = [solve(seed) for seed in range(3)]
    assert all(r.success for r in alone)
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(solve, [0, 1, 2] * 3))
    for k, r in enumerate(together):
        assert np.array_equal(r.x, alone[k % 3].x) and r.nfev == alone[k % 3].nfev
