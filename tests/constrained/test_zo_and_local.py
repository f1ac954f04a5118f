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

    res = minimize(fun, p.x0, jac="zo", bounds=p.bounds(), constraints=p.constraints(derivatives=False),
                   options={"zo_estimator": CGE(mu=1e-6, scheme="forward")})
    assert res.success and p.solved(res.fun, res.x)
    assert res.nfev == len(calls)
    assert res.nfev >= res.njev * (p.n + 1) - res.njev  # every gradient costs ≥ n evaluations


def test_zo_with_torch_tensor():
    p = problems.get("hs071")
    f = lambda x: p.f(x.to(torch.float64))
    res = minimize(f, torch.tensor(p.x0), jac="zo", bounds=p.bounds(), constraints=p.constraints(False))
    assert isinstance(res.x, torch.Tensor) and p.solved(res.fun, res.x.numpy())


def _phase_two_errors(res):
    return [max(h["E_c"], h["E_m"]) for h in res.phase_history if h["phase"] == 2 and h["step"] == "multiplier"]


@pytest.mark.parametrize("name", ["hs071", "hs040", "hs078", "hs043"])
def test_phase_two_converges_quadratically(name):
    p = problems.get(name)
    res = minimize(p.fun, p.x0, jac=p.grad, hess=p.hess, bounds=p.bounds(), constraints=p.constraints(),
                   options={"gtol": 1e-12, "ctol": 1e-12})
    assert res.success
    assert res.phase_history[-1]["phase"] == 2  # the run ends in phase two
    e = _phase_two_errors(res)
    # successive errors above round-off and inside the region of fast convergence
    pairs = [(a, b) for a, b in zip(e, e[1:]) if a < 1e-2 and b > 1e-13]
    assert pairs, e
    ratios = [b / a ** 2 for a, b in pairs]
    assert max(ratios) < 1e3, (e, ratios)
    assert e[-1] < 1e-9
