"""Result fields, multipliers, statuses (NaN, budgets, infeasibility), torch tensors, callbacks."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import Bounds, LinearConstraint, NonlinearConstraint, OptimizeResult

from zeroth.constrained import STATUS_MESSAGES, minimize, problems


def hs071_result(**kw):
    p = problems.get("hs071")
    return p, minimize(p.fun, p.x0, jac=p.grad, bounds=p.bounds(), constraints=p.constraints(), **kw)


def test_fields_and_values():
    p, res = hs071_result()
    assert isinstance(res, OptimizeResult)
    for key in (
        "x",
        "fun",
        "success",
        "status",
        "message",
        "nit",
        "nfev",
        "njev",
        "constr_violation",
        "multipliers",
        "phase_history",
    ):
        assert key in res
    assert res.status == 0 and res.success and res.message.startswith(STATUS_MESSAGES[0])
    assert res.fun == pytest.approx(p.fun(res.x), abs=0)
    assert res.fun == pytest.approx(17.0140173, rel=1e-7)
    assert np.allclose(res.x, p.x_opt, atol=1e-6)
    assert res.constr_violation == pytest.approx(p.violation(res.x), abs=1e-12)
    assert res.nfev > 0 and res.njev > 0 and res.nit > 0
    assert res.phase_history[-1]["phase"] == 2  # from this start phase two alone converges
    assert {h["phase"] for h in res.phase_history} <= {1, 2}
    assert set(res.multipliers) >= {"eq", "ineq", "bounds"}


def test_multipliers_satisfy_kkt():
    p, res = hs071_result()
    m = res.multipliers
    J = p.cons_jac(res.x)  # rows: product ≥ 25 (inequality), sum of squares = 40 (equality)
    v = np.array([m["ineq"][0], m["eq"][0]])
    residual = p.grad(res.x) + J.T @ v + m["bounds"]
    assert np.max(np.abs(residual)) < 1e-6
    assert m["ineq"][0] <= 0  # lower side (≥ 25) active → ≤ 0 in our convention
    assert m["bounds"][0] <= 0  # x1 at its lower bound
    assert np.all(m["bounds"][1:] == 0)


def test_linear_multipliers():
    # min (x-3)^2 + (y-3)^2 s.t. x + y <= 2 → x = y = 1, multiplier 4 on the upper side
    res = minimize(
        lambda x: (x[0] - 3) ** 2 + (x[1] - 3) ** 2, [0.0, 0.0], constraints=LinearConstraint([[1, 1]], -np.inf, 2)
    )
    assert res.success and np.allclose(res.x, [1, 1], atol=1e-6)
    assert res.multipliers["linear"][0] == pytest.approx(4.0, rel=1e-5)


def test_dict_constraints_match_objects():
    p = problems.get("hs043")
    a = minimize(p.fun, p.x0, jac=p.grad, constraints=p.constraints())
    b = minimize(p.fun, p.x0, jac=p.grad, constraints=p.constraints_dict())
    assert a.success and b.success
    assert a.fun == pytest.approx(b.fun, rel=1e-8)


def test_finite_difference_modes():
    p = problems.get("hs035")
    for jac in (None, "2-point", "3-point"):
        res = minimize(p.fun, p.x0, jac=jac, bounds=p.bounds(), constraints=p.constraints())
        assert p.solved(res.fun, res.x), jac


def test_jac_true():
    p = problems.get("hs071")
    res = minimize(lambda x: (p.fun(x), p.grad(x)), p.x0, jac=True, bounds=p.bounds(), constraints=p.constraints())
    assert p.solved(res.fun, res.x)


def test_infeasible_start_is_handled():
    p = problems.get("hs041")  # x0 = (2, 2, 2, 2) lies outside the bounds
    assert p.violation(p.x0) > 0
    res = minimize(p.fun, p.x0, jac=p.grad, bounds=p.bounds(), constraints=p.constraints())
    assert res.success and res.x0_feasible is False
    assert "x0 violated the constraints" in res.message
    assert p.solved(res.fun, res.x)


def test_inconsistent_linear_constraints():
    calls = []
    res = minimize(
        lambda x: calls.append(1) or float(x @ x),
        [0.0, 0.0],
        bounds=Bounds([0, 0], [1, 1]),
        constraints=LinearConstraint([[1, 1]], 3, np.inf),
    )
    assert res.status == 5 and not res.success
    assert res.message == STATUS_MESSAGES[5]
    assert res.constr_violation > 0


@pytest.mark.parametrize("x0", [[0.0, 0.0], [1.0, 1.0], [3.0, 3.0], [-2.0, 0.5]])
def test_inconsistent_nonlinear_constraints(x0):
    """The unit disk and x0 + x1 >= 3 do not meet: the documented status 6 from every start."""
    con = [
        NonlinearConstraint(lambda x: x[0] ** 2 + x[1] ** 2, -np.inf, 1.0),
        NonlinearConstraint(lambda x: x[0] + x[1], 3.0, np.inf),
    ]
    res = minimize(lambda x: x[0], x0, constraints=con, options={"maxiter": 2000})
    assert not res.success
    assert res.status == 6, res.message
    assert res.constr_violation > 0.1


def test_nan_objective_at_start():
    res = minimize(lambda x: float("nan"), [1.0, 2.0])
    assert res.status == 3 and not res.success
    assert "objective" in res.message


def test_nan_constraint():
    con = NonlinearConstraint(lambda x: np.array([np.nan]), 0, 1)
    res = minimize(lambda x: float(x @ x), [1.0, 2.0], constraints=con)
    assert res.status == 4 and not res.success


def test_nan_region_is_avoided():
    # log is NaN for x < 0; the line search backs off and still solves min (log x - 1)^2 + x, x >= 1e-3
    f = lambda x: (math.log(x[0]) - 1) ** 2 + 0.1 * x[0] if x[0] > 0 else float("nan")
    res = minimize(f, [5.0], bounds=[(1e-3, None)])
    assert res.success


def test_iteration_budget():
    _, res = hs071_result(options={"maxiter": 3})
    assert res.status == 1 and not res.success and res.message == STATUS_MESSAGES[1]
    assert np.isfinite(res.constr_violation)


def test_evaluation_budget():
    p = problems.get("hs071")  # finite-difference gradients: 5 objective values each
    res = minimize(p.fun, p.x0, bounds=p.bounds(), constraints=p.constraints(), options={"maxfev": 5})
    assert res.status == 2 and not res.success
    assert res.nfev <= 6  # the budget plus one evaluation to report f at the returned point


def test_callback_stop_and_calls():
    seen = []

    def cb(intermediate_result):
        seen.append(intermediate_result.fun)
        if len(seen) == 3:
            raise StopIteration

    _, res = hs071_result(callback=cb)
    assert res.status == 8 and len(seen) == 3
    xs = []
    _, res = hs071_result(callback=lambda x: xs.append(np.array(x)))
    assert res.success and len(xs) == res.nit


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_tensor_in_and_out(dtype):
    seen = set()

    def f(x):
        seen.add(type(x))
        return ((x - 2.0) ** 2).sum()

    def c(x):
        seen.add(type(x))
        return x.sum(0, keepdim=True)

    x0 = torch.zeros(3, dtype=dtype)
    res = minimize(f, x0, bounds=Bounds(-1, 1.5), constraints=NonlinearConstraint(c, -np.inf, 3.0))
    assert isinstance(res.x, torch.Tensor) and res.x.dtype == dtype and res.x.device == x0.device
    assert seen == {torch.Tensor}
    assert res.success
    atol = 1e-6 if dtype == torch.float64 else 2e-3  # float32 runs to √ε tolerances
    assert torch.allclose(res.x, torch.ones(3, dtype=dtype), atol=atol)


def test_never_success_when_infeasible():
    # equality that cannot hold inside the bounds: x0^2 = -1
    con = NonlinearConstraint(lambda x: x[0] ** 2, -1, -1)
    res = minimize(lambda x: float(x @ x), [1.0, 1.0], constraints=con, options={"maxiter": 500})
    assert not res.success and res.constr_violation > 0.5
