"""Bad inputs give clear errors naming the argument, before any evaluation."""

import numpy as np
import pytest
from scipy.optimize import Bounds, LinearConstraint, NonlinearConstraint, OptimizeWarning

from zeroth.constrained import minimize


class Counting:
    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return float(np.sum(np.asarray(x) ** 2))


BAD = [
    (dict(x0=np.zeros((2, 2))), ValueError, "x0 must be 1-D"),
    (dict(x0=[np.nan, 1.0]), ValueError, "x0 contains NaN"),
    (dict(x0=[]), ValueError, "x0 must not be empty"),
    (dict(bounds=Bounds([0, 0, 0], [1, 1, 1])), ValueError, "bounds must have length 2"),
    (dict(bounds=[(0, 1)]), ValueError, "bounds must have length 2"),
    (dict(bounds=Bounds([0, 2], [1, 1])), ValueError, r"bounds are infeasible: lb\[1\]"),
    (dict(bounds=[(0, 1), (3, 2)]), ValueError, "bounds are infeasible"),
    (dict(bounds=5), TypeError, "bounds must be None"),
    (dict(constraints=[5]), TypeError, r"constraints\[0\] must be a dict"),
    (dict(constraints="eq"), TypeError, r"constraints\[0\] must be a dict"),
    (dict(constraints={"type": "le", "fun": lambda x: x[0]}), ValueError, r"\['type'\] must be 'eq' or 'ineq'"),
    (dict(constraints={"type": "eq"}), TypeError, r"\['fun'\] must be callable"),
    (dict(constraints={"type": "eq", "fun": lambda x: x, "jacobian": 1}), ValueError, "unknown keys"),
    (dict(constraints=LinearConstraint(np.ones((1, 3)), 0, 1)), ValueError, "must have 2 columns"),
    (dict(constraints=LinearConstraint(np.ones((1, 2)), 2, 1)), ValueError, "lb > ub"),
    (dict(constraints=NonlinearConstraint(lambda x: x[0], 0, 1, jac="4-point")), ValueError, r"\.jac must be"),
    (dict(jac="forward"), ValueError, "jac must be"),
    (dict(hess="newton"), ValueError, "hess must be"),
    (dict(method="slsqp2"), ValueError, "Unknown solver 'slsqp2'"),
    (dict(method=3), TypeError, "method must be a string"),
    (dict(tol=-1.0), ValueError, "tol must be"),
    (dict(options=[1]), TypeError, "options must be a dict"),
    (dict(options={"maxiter": 0}), ValueError, r"options\['maxiter'\]"),
    (dict(options={"gtol": -1e-3}), ValueError, r"options\['gtol'\]"),
    (dict(callback=3), TypeError, "callback must be callable"),
]


@pytest.mark.parametrize("kwargs,exc,match", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_input(kwargs, exc, match):
    fun = Counting()
    kwargs = dict(kwargs)
    x0 = kwargs.pop("x0", [1.0, 2.0])
    with pytest.raises(exc, match=match):
        minimize(fun, x0, **kwargs)
    assert fun.calls == 0  # rejected before any work


def test_fun_not_callable():
    with pytest.raises(TypeError, match="fun must be callable"):
        minimize(3, [1.0])


def test_constraint_output_size_mismatch():
    con = NonlinearConstraint(lambda x: np.array([x[0], x[1]]), [0, 0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match=r"constraints\[0\]: lb/ub do not match"):
        minimize(lambda x: x @ x, [1.0, 2.0], constraints=con)


def test_wrong_gradient_shape():
    with pytest.raises(ValueError, match="jac must return an array of shape"):
        minimize(lambda x: x @ x, [1.0, 2.0], jac=lambda x: np.ones(3))


def test_nonscalar_objective():
    with pytest.raises(ValueError, match="fun must return a scalar"):
        minimize(lambda x: x, [1.0, 2.0])


def test_unknown_option_warns():
    with pytest.warns(OptimizeWarning, match="Unknown solver options: foo"):
        res = minimize(lambda x: x @ x, [1.0, 2.0], options={"foo": 1})
    assert res.success


def test_method_is_case_insensitive():
    res = minimize(lambda x: x @ x, [1.0, 2.0], method="NPASA")
    assert res.success and np.allclose(res.x, 0, atol=1e-6)


def test_tol_accepts_any_real_number():
    # a numbers.Real that numpy cannot take (Fraction) once gave numpy's TypeError from np.isfinite
    from fractions import Fraction

    exact = minimize(lambda x: x @ x, [1.0, 2.0], tol=1e-6)
    res = minimize(lambda x: x @ x, [1.0, 2.0], tol=Fraction(1, 10**6))
    assert res.success and np.array_equal(res.x, exact.x) and res.nfev == exact.nfev
    with pytest.raises(ValueError, match="tol must be"):
        minimize(lambda x: x @ x, [1.0, 2.0], tol=float("nan"))
