"""IPOPT through cyipopt's low-level ``Problem`` with sparse Jacobian/Hessian structure (the
fair baseline for the scaling family); ``available()`` says whether cyipopt is installed.

cyipopt is optional and never required by the tests: Debian's ``coinor-libipopt-dev`` (plus
``liblapack-dev libblas-dev``), then ``pip install cyipopt``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def available() -> bool:
    try:
        import cyipopt  # noqa: F401
    except ImportError:
        return False
    return True


def solve_scaling(p, fun, grad, hess=True, tol=1e-8, options=None):
    """IPOPT on a :class:`bench.constrained.scaling.ScalingProblem`; ``fun``/``grad`` are the
    (counted) objective and gradient; ``hess=False`` uses IPOPT's limited-memory quasi-Newton;
    ``options``: further IPOPT options (name -> value). IPOPT's defaults otherwise — among them
    ``bound_relax_factor`` = 1e-8, which relaxes every bound and constraint side by
    1e-8·max(1, |side|) (the ball's r² ≈ 182 at n = 3000: a violation of 1.8e-6 is accepted).
    Returns (x, status, iterations)."""
    import cyipopt

    n = p.n
    A = sp.vstack([p.A_eq, p.A_in], format="coo")
    m_lin = A.shape[0]
    rows = np.concatenate([A.row, np.full(n, m_lin)])
    cols = np.concatenate([A.col, np.arange(n)])
    A_data = A.data.copy()
    diag = np.arange(n)

    class Problem:
        def objective(self, x):
            return fun(x)

        def gradient(self, x):
            return grad(x)

        def constraints(self, x):
            return np.concatenate([A @ x, p.ball(x)])

        def jacobianstructure(self):
            return rows, cols

        def jacobian(self, x):
            return np.concatenate([A_data, 2.0 * x])

        def hessianstructure(self):
            return diag, diag

        def hessian(self, x, lagrange, obj_factor):
            return obj_factor * p.d + 2.0 * lagrange[-1]

    cl = np.concatenate([p.b_eq, np.full(p.b_in.size, -np.inf), [-np.inf]])
    cu = np.concatenate([p.b_eq, p.b_in, [p.r2]])
    nlp = cyipopt.Problem(n=n, m=cl.size, problem_obj=Problem(), lb=-np.ones(n), ub=np.ones(n), cl=cl, cu=cu)
    nlp.add_option("print_level", 0)
    nlp.add_option("sb", "yes")
    nlp.add_option("tol", tol)
    nlp.add_option("constr_viol_tol", tol)
    if not hess:
        nlp.add_option("hessian_approximation", "limited-memory")
    for name, value in (options or {}).items():
        nlp.add_option(name, value)
    x, info = nlp.solve(p.x0)
    return x, info["status"], None
