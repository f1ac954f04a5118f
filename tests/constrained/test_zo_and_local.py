"""jac="zo" (zeroth-order gradients and Jacobians) and local quadratic convergence of phase two."""

import numpy as np
import pytest
import torch

from zeroth.constrained import minimize, problems
from zeroth.estimators import CGE

ZO_PROBLEMS = ["hs035", "hs071", "hs043", "hs078", "hs083"]


@pytest.mark.parametrize("name", ZO_PROBLEMS)
def test_zo_solves(name):
    p = problems.get(name)
    res = minimize(p.fun, p.x0, jac="zo", bounds=p.bounds(), constraints=p.constraints(derivatives=False))
    assert res.success, res.message
    assert p.solved(res.fun, res.x)


def test_zo_counts_evaluations_and_uses_estimator():
    p = problems.get("hs035")
    calls = []

    def fun(x):
        calls.append(1)
        return p.fun(x)

    res = minimize(
        fun,
        p.x0,
        jac="zo",
        bounds=p.bounds(),
        constraints=p.constraints(derivatives=False),
        options={"zo_estimator": CGE(mu=1e-6, scheme="forward")},
    )
    assert res.success and p.solved(res.fun, res.x)
    assert res.nfev == len(calls)
    assert res.nfev >= res.njev * (p.n + 1) - res.njev  # every gradient costs ≥ n evaluations


def test_zo_with_torch_tensor():
    p = problems.get("hs071")
    f = lambda x: p.f(x.to(torch.float64))
    res = minimize(f, torch.tensor(p.x0), jac="zo", bounds=p.bounds(), constraints=p.constraints(False))
    assert isinstance(res.x, torch.Tensor) and p.solved(res.fun, res.x.numpy())


def test_zo_gradients_are_precise_at_the_end():
    # one-sided differences while far, central ones near the solution: the KKT residual at the
    # returned point is that of central differences (~1e-9), not of forward ones (~1e-7)
    p = problems.get("hs071")
    res = minimize(p.fun, p.x0, jac="zo", bounds=p.bounds(), constraints=p.constraints(derivatives=False))
    assert res.success and p.solved(res.fun, res.x)
    m = res.multipliers
    residual = p.grad(res.x) + p.cons_jac(res.x).T @ np.array([m["ineq"][0], m["eq"][0]]) + m["bounds"]
    assert np.max(np.abs(residual)) < 1e-7


def test_rough_gradient_is_recomputed_when_precision_is_asked():
    from zeroth.constrained._functions import Functions
    from zeroth.constrained._inputs import check_inputs

    x, spec = check_inputs(np.array([0.3, -0.2]), None, ())
    fns = Functions(lambda y: float(np.sum(np.exp(y))), (), "zo", None, spec, x, 1000)
    rough = fns.g(x, rough=True)
    assert fns.nfev == 3  # forward differences: f(x) and one value per coordinate
    assert np.allclose(rough, np.exp(x), rtol=1e-6)
    assert fns.g(x, rough=True) is rough and fns.nfev == 3  # cached while rough is good enough
    precise = fns.g(x)
    assert fns.nfev == 3 + 4  # central differences: two values per coordinate
    assert np.allclose(precise, np.exp(x), rtol=1e-9)


def _newton_errors(history):
    """max(E_c, E_m) after the unit Newton (multiplier) steps that the estimators accepted."""
    return [
        max(h["E_c"], h["E_m"])
        for h in history
        if h["phase"] == 2 and h["step"] == "multiplier" and h["accept"] == "estimators"
    ]


# hs043 and hs006 start with merit-accepted steps far from the solution, then go quadratic
@pytest.mark.parametrize("name", ["hs071", "hs040", "hs078", "hs043", "hs006"])
def test_phase_two_converges_quadratically(name):
    p = problems.get(name)
    res = minimize(
        p.fun,
        p.x0,
        jac=p.grad,
        hess=p.hess,
        bounds=p.bounds(),
        constraints=p.constraints(),
        options={"gtol": 1e-12, "ctol": 1e-12},
    )
    assert res.success and p.solved(res.fun, res.x)
    last_one = max([k for k, h in enumerate(res.phase_history) if h["phase"] == 1], default=-1)
    tail = res.phase_history[last_one + 1 :]
    assert len(tail) >= 3 and all(h["phase"] == 2 for h in tail)  # phase two is reached and finishes
    assert all(h["accept"] == "estimators" for h in tail[-3:])  # ... with full Newton steps
    e = _newton_errors(tail)
    # successive errors inside the region of fast convergence and above round-off
    pairs = [(a, b) for a, b in zip(e, e[1:]) if a < 1e-2 and b > 1e-13]
    assert pairs, e
    assert max(b / a**2 for a, b in pairs) < 10.0, e  # e_{k+1} <= C e_k^2
    assert min(a for a, _ in pairs) > 1e6 * e[-1], e  # the digits double: ~1e-3 -> ~1e-9 -> below 1e-12
    assert e[-1] < 1e-11


def test_phase_one_carries_the_run_when_phase_two_is_cut_short():
    # one phase-two step per visit: the augmented-Lagrangian phase one (PASA subproblems) does the work
    p = problems.get("hs071")
    res = minimize(
        p.fun, p.x0, jac=p.grad, bounds=p.bounds(), constraints=p.constraints(), options={"max_phase_two_steps": 1}
    )
    assert res.success and p.solved(res.fun, res.x)
    assert sum(h["phase"] == 1 for h in res.phase_history) >= 2
