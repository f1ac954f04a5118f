"""The QP back ends against each other and against the KKT conditions (the slow obvious
reference: a point is the optimum of a convex QP iff it is feasible and has multipliers of the
right signs that make the gradient of the Lagrangian vanish); finite differences against scipy."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize._numdiff import approx_derivative

from zeroth.constrained._functions import Functions
from zeroth.constrained._inputs import check_inputs
from zeroth.constrained._qp import solve_qp


def random_qp(rng, n, m, infeasible=False):
    M = rng.normal(size=(n, n))
    H = M @ M.T + 0.1 * np.eye(n)
    g, C = rng.normal(size=n), rng.normal(size=(m, n))
    x0 = rng.normal(size=n)
    c0 = C @ x0
    lo, hi = c0 - rng.uniform(0, 1, m), c0 + rng.uniform(0, 1, m)
    eq = rng.random(m) < 0.2
    lo[eq] = hi[eq] = c0[eq]
    lo[rng.random(m) < 0.3] = -np.inf
    lb, ub = x0 - rng.uniform(0, 1, n), x0 + rng.uniform(0, 1, n)
    ub[rng.random(n) < 0.3] = np.inf
    fixed = rng.random(n) < 0.1
    lb[fixed] = ub[fixed] = x0[fixed]
    if infeasible and m:
        lo[0] = hi[0] = c0[0] + 10.0 * np.sum(np.abs(C[0]) * np.maximum(np.abs(ub - x0), 1) * np.isfinite(ub)) + 1e3
        ub = np.where(np.isfinite(ub), ub, x0 + 1.0)
    return H, g, C, lo, hi, lb, ub


def assert_kkt(H, g, C, lo, hi, lb, ub, res, tol=1e-8):
    x, w, wb = res.x, res.w, res.wb
    scale = 1 + np.abs(x).max()
    Cx = C @ x
    assert np.all(Cx >= lo - tol * scale) and np.all(Cx <= hi + tol * scale)
    assert np.all(x >= lb - tol * scale) and np.all(x <= ub + tol * scale)
    assert np.max(np.abs(H @ x + g + C.T @ w + wb)) <= tol * (1 + np.abs(g).max() + np.abs(w).max(initial=0))
    free_rows, free_bounds = lo < hi, lb < ub
    # complementarity: a positive multiplier only at an active upper side, a negative one at a lower side
    assert np.all((w[free_rows] <= tol) | (np.abs(Cx - hi)[free_rows] <= 1e-7 * scale))
    assert np.all((w[free_rows] >= -tol) | (np.abs(Cx - lo)[free_rows] <= 1e-7 * scale))
    assert np.all((wb[free_bounds] <= tol) | (np.abs(x - ub)[free_bounds] <= 1e-7 * scale))
    assert np.all((wb[free_bounds] >= -tol) | (np.abs(x - lb)[free_bounds] <= 1e-7 * scale))


@pytest.mark.parametrize("seed", range(40))
def test_back_ends_agree_and_satisfy_kkt(seed):
    rng = np.random.default_rng(seed)
    data = random_qp(rng, int(rng.integers(2, 25)), int(rng.integers(0, 15)))
    a = solve_qp(*data, method="daqp")
    b = solve_qp(*data, method="sparse")
    c = solve_qp(*data, method="sparse", warm=a.active)
    for res in (a, b, c):
        assert res.status == "optimal"
        assert_kkt(*data, res)
    assert np.allclose(a.x, b.x, atol=1e-8) and np.allclose(a.x, c.x, atol=1e-8)  # x is unique (H ≻ 0)
    assert c.solver == "active-set guess"  # a correct guess costs one KKT solve


@pytest.mark.parametrize("method", ["daqp", "sparse"])
def test_infeasible_qp_is_certified(method):
    H, g = np.eye(2), np.zeros(2)
    res = solve_qp(
        H, g, np.array([[1.0, 1.0]]), np.array([3.0]), np.array([np.inf]), np.zeros(2), np.ones(2), method=method
    )
    assert res.status == "infeasible"


def test_sparse_inputs_use_the_sparse_path():
    n = 50
    H = sp.identity(n, format="csr")
    C = sp.random(10, n, density=0.1, random_state=0, format="csr")
    res = solve_qp(H, -np.ones(n), C, np.full(10, -np.inf), np.zeros(10), -np.ones(n), np.ones(n))
    ref = solve_qp(
        H.toarray(),
        -np.ones(n),
        C.toarray(),
        np.full(10, -np.inf),
        np.zeros(10),
        -np.ones(n),
        np.ones(n),
        method="daqp",
    )
    assert res.solver != "daqp" and np.allclose(res.x, ref.x, atol=1e-9)


@pytest.mark.parametrize("mode", ["2-point", "3-point", "cs"])
def test_differences_match_scipy_inside_and_at_bounds(mode):
    f = lambda x: np.sin(x[0]) * np.exp(0.5 * x[1]) + x[2] ** 3
    lb, ub = np.array([0.0, -1.0, -2.0]), np.array([1.0, 1.0, 2.0])
    for x in (np.array([0.3, 0.2, -0.4]), np.array([1.0, -1.0, 2.0])):  # interior; at bounds
        x_, spec = check_inputs(x, list(zip(lb, ub)), ())
        fns = Functions(f, (), mode, None, spec, x_, 1000)
        ours = fns.g(x_)
        ref = approx_derivative(f, x, method=mode, bounds=(lb, ub))
        exact = np.array([np.cos(x[0]) * np.exp(0.5 * x[1]), 0.5 * np.sin(x[0]) * np.exp(0.5 * x[1]), 3 * x[2] ** 2])
        tol = {"2-point": 1e-6, "3-point": 1e-8, "cs": 1e-12}[mode]
        assert np.allclose(ours, exact, rtol=tol, atol=tol)
        assert np.allclose(ours, ref, rtol=2 * tol, atol=2 * tol)
