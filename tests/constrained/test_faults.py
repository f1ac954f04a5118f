"""Regression tests for the faults of issue 18, each as a kind: never a false success, never a
call outside the bounds, x0 projected first, sparse Jacobians, best iterate on budget stops,
NaN/inf always its own status."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, NonlinearConstraint, OptimizeWarning, rosen, rosen_der

from zeroth.constrained import STATUS_MESSAGES, minimize
from zeroth.estimators import CGE, RGE


def test_status_table_is_complete():
    assert sorted(STATUS_MESSAGES) == list(range(10))
    assert len(set(STATUS_MESSAGES.values())) == 10  # one message per cause


# --- 1. never success with a non-finite value ----------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("bounds", [None, [(0.4, None), (None, None)]])
def test_nonfinite_region_is_never_a_success(bad, bounds):
    f = lambda x: float(x @ x) if x[0] >= 0.5 else bad
    res = minimize(f, [2.0, 0.0], jac=lambda x: 2 * x, bounds=bounds)
    assert not res.success and res.status == 3
    assert np.isfinite(res.fun) and res.fun == pytest.approx(f(res.x))
    assert res.x[0] >= 0.5 and res.fun == pytest.approx(0.25, abs=1e-6)  # the best finite point (SLSQP's)


# --- 2. unbounded problems diverge with their own status -------------------------------------
@pytest.mark.parametrize("case", ["x0", "x0+x1", "-x0-x1 s.t. x0=x1"])
def test_unbounded_is_reported_as_diverging(case):
    if case == "x0":
        res = minimize(lambda x: x[0], [0.0], jac=lambda x: np.ones(1))
    elif case == "x0+x1":
        res = minimize(lambda x: x[0] + x[1], [0.0, 0.0], jac=lambda x: np.ones(2))
    else:
        res = minimize(
            lambda x: -x[0] - x[1], [0.0, 0.0], jac=lambda x: -np.ones(2), constraints=LinearConstraint([[1, -1]], 0, 0)
        )
    assert res.status == 9 and not res.success, res.message
    assert res.message == STATUS_MESSAGES[9]


def test_unbounded_along_a_nonlinear_equality_is_not_a_success():
    res = minimize(
        lambda x: -x[0] - x[1],
        [0.0, 0.0],
        jac=lambda x: -np.ones(2),
        constraints={"type": "eq", "fun": lambda x: x[0] - x[1]},
        options={"maxiter": 300},
    )
    assert not res.success and res.status in (1, 9)


# --- 3./4./5. never outside the bounds, fixed variables never moved, x0 projected first -----------
class Guarded:
    """A function that records every call outside a box (or that moves a fixed coordinate)."""

    def __init__(self, fn, lb, ub):
        self.fn, self.lb, self.ub, self.bad, self.calls = fn, np.asarray(lb, float), np.asarray(ub, float), [], 0

    def __call__(self, x):
        self.calls += 1
        x = np.real(np.asarray(x))
        if np.any(x < self.lb) or np.any(x > self.ub):
            self.bad.append(x.copy())
        return self.fn(x)


ZO_ESTIMATORS = {
    "default": None,
    "CGE forward": CGE(mu=1e-3, scheme="forward"),
    "CGE central": CGE(mu=1e-3, scheme="central"),
    "RGE": RGE(q=4, mu=1e-3),
}


@pytest.mark.parametrize("jac", ["2-point", "3-point", "zo"] + [f"zo:{k}" for k in ZO_ESTIMATORS if k != "default"])
def test_no_call_outside_the_bounds(jac):
    # f undefined for x0 < 0 (sqrt), optimum on that bound; constraint sqrt(x0) ≥ 0.1
    f = Guarded(lambda x: np.sqrt(x[0]) + (x[1] - 0.3) ** 2, [0, 0], [1, 1])
    c = Guarded(lambda x: np.sqrt(x[0]), [0, -np.inf], [np.inf, np.inf])
    options = {}
    if jac.startswith("zo:"):
        options["zo_estimator"] = ZO_ESTIMATORS[jac[3:]]
        options["maxfev"] = 1000
        jac = "zo"
    res = minimize(
        f,
        [0.5, 0.5],
        jac=jac,
        bounds=[(0, 1), (0, 1)],
        constraints=NonlinearConstraint(c, 0.1, np.inf),
        options=options,
    )
    assert f.bad == [] and c.bad == []
    assert f.calls > 0 and c.calls > 0
    if "zo_estimator" not in options:  # the precise schemes solve it
        assert res.success and res.x[0] == pytest.approx(0.01, abs=1e-6)


@pytest.mark.parametrize("jac", ["2-point", "3-point", "cs", "zo", "zo:CGE central", "zo:RGE"])
def test_fixed_variables_are_never_moved(jac):
    f = Guarded(lambda x: (x[0] - 1) ** 2 + x[0] * x[1] + x[2] ** 2, [-np.inf, 2, -np.inf], [np.inf, 2, np.inf])
    con = NonlinearConstraint(
        Guarded(lambda x: x[0] + x[1] ** 2 + x[2], [-np.inf, 2, -np.inf], [np.inf, 2, np.inf]), -np.inf, 10.0
    )
    options = {}
    if jac.startswith("zo:"):
        options["zo_estimator"] = ZO_ESTIMATORS[jac[3:]]
        options["maxfev"] = 1000
        jac = "zo"
    res = minimize(
        f,
        np.array([0.0, 2.0, 1.0]),
        jac=jac,
        bounds=[(None, None), (2, 2), (None, None)],
        constraints=con,
        options=options,
    )
    assert f.bad == [] and con.fun.bad == []
    assert res.x[1] == 2.0
    if "zo_estimator" not in options:
        assert res.success and res.x[0] == pytest.approx(0.0, abs=1e-5)


def test_x0_is_projected_before_any_call():
    seen = []

    def c(x):
        seen.append(float(x[0]))
        return x[0] ** 2

    res = minimize(
        lambda x: (x[0] - 0.2) ** 2, [8.0], bounds=[(-0.5, 1)], constraints=NonlinearConstraint(c, -np.inf, 0.5)
    )
    assert seen and min(seen) >= -0.5 and max(seen) <= 1.0
    assert res.success and res.x[0] == pytest.approx(0.2, abs=1e-6)
    assert res.x0_feasible is False


def test_x0_is_projected_onto_linear_constraints_too():
    f = Guarded(lambda x: np.log(x[0]) ** 2 + x[1] ** 2, [1e-12, -np.inf], [np.inf, np.inf])
    res = minimize(f, [-5.0, 0.0], constraints=LinearConstraint([[1, 0]], 0.5, np.inf))
    assert f.bad == [] and res.success and res.x[0] == pytest.approx(1.0, abs=1e-6)


# --- 6. sparse Jacobians and linear constraints --------------------------------------------------
@pytest.mark.parametrize("kind", [sp.csc_array, sp.csr_array, sp.csr_matrix])
def test_sparse_constraint_jacobian(kind):
    con = NonlinearConstraint(lambda x: np.array([x @ x]), -np.inf, 1.0, jac=lambda x: kind(2 * x[None, :]))
    res = minimize(lambda x: x[0] + x[1], [0.5, 0.5], jac=lambda x: np.ones(2), constraints=con)
    assert res.success and np.allclose(res.x, -np.sqrt(0.5), atol=1e-7)


def test_sparse_linear_constraint_and_hessian():
    n = 6
    A = sp.csr_array(np.eye(n)[:3] + np.eye(n, k=1)[:3])
    res = minimize(
        lambda x: 0.5 * float(x @ x) - x.sum(),
        np.zeros(n),
        jac=lambda x: x - 1,
        hess=lambda x: sp.identity(n, format="csr"),
        constraints=LinearConstraint(A, -np.inf, 1.0),
    )
    ref = minimize(
        lambda x: 0.5 * float(x @ x) - x.sum(),
        np.zeros(n),
        jac=lambda x: x - 1,
        constraints=LinearConstraint(A.toarray(), -np.inf, 1.0),
    )
    assert res.success and ref.success and np.allclose(res.x, ref.x, atol=1e-7)


# --- 7. budget stops return the best iterate ------------------------------------------------------
def test_maxiter_returns_the_best_iterate():
    res = minimize(rosen, np.zeros(10), jac=rosen_der, options={"maxiter": 40})
    assert res.status == 1 and not res.success
    assert res.fun < 1.0 < rosen(np.zeros(10))  # progress is kept (the 40th iterate: ~0.2; x0: 9)
    assert res.fun == pytest.approx(rosen(np.asarray(res.x)))


def test_maxfev_returns_the_best_iterate():
    res = minimize(rosen, np.zeros(5), options={"maxfev": 60})
    assert res.status == 2 and res.fun < rosen(np.zeros(5))


def test_best_iterate_prefers_feasibility():
    # an infeasible iterate with a low f never beats a feasible one
    con = NonlinearConstraint(lambda x: x[0] ** 2 + x[1] ** 2, 1.0, 1.0)
    res = minimize(lambda x: x[0] + 2 * x[1], [3.0, 3.0], constraints=con, options={"maxiter": 6})
    assert res.status == 1
    hist = [h for h in res.phase_history if "E_c" in h]
    assert res.constr_violation <= min(h["E_c"] for h in hist) + 1e-12


# --- 8./9. NaN/inf always its own status -------------------------------------------------------------
def test_violation_is_inf_where_the_constraint_is_nan():
    nan = NonlinearConstraint(lambda x: np.array([np.nan]), 0, 1)
    res = minimize(lambda x: float(x @ x), [1.0, 2.0], constraints=nan)
    assert res.status == 4 and not res.success and res.constr_violation == np.inf


@pytest.mark.parametrize("jac", ["callable", "zo", "2-point"])
def test_nan_gradient_mid_run_is_status_3(jac):
    def f(x):
        return float((x - 3) @ (x - 3)) if x[0] < 2 else float("nan")

    def g(x):
        return 2 * (x - 3) if x[0] < 2 else np.full(2, np.nan)

    res = minimize(f, [0.0, 0.0], jac=g if jac == "callable" else jac)
    assert res.status == 3 and not res.success
    assert np.isfinite(res.fun) and res.fun < 18.0  # a best point better than x0 (f = 18)


def test_nan_constraint_mid_run_is_status_4():
    con = NonlinearConstraint(lambda x: np.array([x[0] if x[0] < 1 else np.nan]), -np.inf, 5.0)
    res = minimize(lambda x: float((x - 3) @ (x - 3)), [0.0, 0.0], jac=lambda x: 2 * (x - 3), constraints=con)
    assert res.status == 4 and not res.success


# --- scipy compatibility of the signature -----------------------------------------------------------
def test_scipy_argument_order():
    res = minimize(
        lambda x, a: float((x - a) @ (x - a)),
        [0.0, 0.0],
        (1.0,),
        "npasa",
        lambda x, a: 2 * (x - a),
        None,
        None,
        Bounds(-5, 5),
        (),
        1e-10,
        None,
        {"maxiter": 100},
    )
    assert res.success and np.allclose(res.x, 1.0, atol=1e-8)


def test_hessp_is_ignored_with_a_warning():
    with pytest.warns(OptimizeWarning, match="hessp"):
        res = minimize(lambda x: float(x @ x), [1.0, 2.0], jac=lambda x: 2 * x, hessp=lambda x, p: 2 * p)
    assert res.success


def test_complex_step_is_a_complex_step():
    calls = []

    def f(x):
        calls.append(np.iscomplexobj(x))
        return (x[0] - 1) ** 2 + (x[1] + 2) ** 4

    res = minimize(f, np.array([0.0, 0.0]), jac="cs")
    assert res.success and any(calls)  # really evaluated at complex points
    assert np.allclose(res.x, [1, -2], atol=1e-3)


def test_complex_step_rejects_tensors():
    import torch

    with pytest.raises(ValueError, match="jac='cs'"):
        minimize(lambda x: (x**2).sum(), torch.zeros(2, dtype=torch.float64), jac="cs")
