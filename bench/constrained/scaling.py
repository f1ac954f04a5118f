"""The scaling family of issue 18: a convex problem of any size n, sparse in its linear rows.

    min ½ Σ dᵢ (xᵢ − cᵢ)²            dᵢ = 10^U(0,2), cᵢ ~ U(−2, 2)
    s.t. A_eq x = b_eq                 n/10 rows, 5 nonzeros ~ U(−1, 1) each
         A_in x ≤ b_in                 n/5 rows, 5 nonzeros each; half of them active at x_f
         ‖x‖² ≤ r²                     r² = 2‖x_f‖² (active at the solution: ‖c‖² ≫ r²)
         −1 ≤ x ≤ 1

with x_f ~ U(−0.3, 0.3) a feasible point (seeded). The start is x0 = 0 (feasible for the bounds,
not for the equalities). Gradients, Jacobians and Hessians are exact; the Jacobian of the linear
rows and the Hessian are sparse (the ball row is dense).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class ScalingProblem:
    n: int
    d: np.ndarray
    c: np.ndarray
    A_eq: sp.csr_array
    b_eq: np.ndarray
    A_in: sp.csr_array
    b_in: np.ndarray
    r2: float

    @property
    def x0(self):
        return np.zeros(self.n)

    def fun(self, x):
        r = x - self.c
        return 0.5 * float(self.d @ (r * r))

    def grad(self, x):
        return self.d * (x - self.c)

    def hess(self, x):
        return sp.diags_array(self.d, format="csr")

    def ball(self, x):
        return np.array([float(x @ x)])

    def ball_jac(self, x):
        return 2.0 * x[None, :]

    def ball_hess(self, x, v):
        return sp.diags_array(np.full(self.n, 2.0 * v[0]), format="csr")

    def violation(self, x):
        x = np.asarray(x, dtype=float)
        return max(
            0.0,
            float(np.max(np.abs(self.A_eq @ x - self.b_eq), initial=0.0)),
            float(np.max(self.A_in @ x - self.b_in, initial=0.0)),
            float(x @ x - self.r2),
            float(np.max(np.abs(x) - 1.0, initial=0.0)),
        )


def _rows(rng, m, n, k=5):
    rows = np.repeat(np.arange(m), k)
    cols = np.concatenate([rng.choice(n, k, replace=False) for _ in range(m)])
    return sp.csr_array((rng.uniform(-1, 1, m * k), (rows, cols)), shape=(m, n))


def scaling_problem(n: int, seed: int = 0) -> ScalingProblem:
    """The family's member of size n (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    d = 10.0 ** rng.uniform(0, 2, n)
    c = rng.uniform(-2, 2, n)
    xf = rng.uniform(-0.3, 0.3, n)
    A_eq, A_in = _rows(rng, n // 10, n), _rows(rng, n // 5, n)
    b_eq = A_eq @ xf
    slack = np.where(rng.random(n // 5) < 0.5, 0.0, rng.uniform(0, 1, n // 5))
    b_in = A_in @ xf + slack
    return ScalingProblem(n, d, c, A_eq, b_eq, A_in, b_in, 2.0 * float(xf @ xf))


def _counted(fn, counter, key):
    def call(x, *args):
        counter[key] += 1
        return fn(x)

    return call


def run(p: ScalingProblem, solver: str):
    """Run ``solver`` on ``p``: dict(time, cpu, nfev, njev, flag, f, viol, nit). ``time`` is wall
    time, ``cpu`` the process's CPU time (all threads) over the same interval; nfev/njev count the
    calls of the objective and of its gradient, whatever the solver calls them for."""
    import time
    import warnings

    from scipy.optimize import Bounds, LinearConstraint, NonlinearConstraint
    from scipy.optimize import minimize as scipy_minimize

    from zeroth.constrained import minimize as npasa_minimize

    counts = {"f": 0, "g": 0}
    fun, grad = _counted(p.fun, counts, "f"), _counted(p.grad, counts, "g")
    bounds = Bounds(-np.ones(p.n), np.ones(p.n))
    lin = [LinearConstraint(p.A_eq, p.b_eq, p.b_eq), LinearConstraint(p.A_in, -np.inf, p.b_in)]
    ball = NonlinearConstraint(p.ball, -np.inf, p.r2, jac=p.ball_jac, hess=p.ball_hess)
    start, start_cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if solver == "npasa":
            res = npasa_minimize(fun, p.x0, jac=grad, hess=p.hess, bounds=bounds, constraints=lin + [ball])
            x, flag, nit = np.asarray(res.x), res.success, res.nit
        elif solver == "npasa-bfgs":
            res = npasa_minimize(fun, p.x0, jac=grad, bounds=bounds, constraints=lin + [ball])
            x, flag, nit = np.asarray(res.x), res.success, res.nit
        elif solver == "trust-constr":
            res = scipy_minimize(
                fun,
                p.x0,
                jac=grad,
                hess=p.hess,
                bounds=bounds,
                constraints=lin + [ball],
                method="trust-constr",
                options={"gtol": 1e-8, "xtol": 1e-12, "maxiter": 3000, "sparse_jacobian": True},
            )
            x, flag, nit = res.x, res.success, res.nit
        elif solver == "SLSQP":
            Ae, Ai = p.A_eq.toarray(), p.A_in.toarray()
            cons = [
                {"type": "eq", "fun": lambda x: Ae @ x - p.b_eq, "jac": lambda x: Ae},
                {"type": "ineq", "fun": lambda x: p.b_in - Ai @ x, "jac": lambda x: -Ai},
                {"type": "ineq", "fun": lambda x: p.r2 - p.ball(x), "jac": lambda x: -p.ball_jac(x)},
            ]
            res = scipy_minimize(
                fun,
                p.x0,
                jac=grad,
                bounds=bounds,
                constraints=cons,
                method="SLSQP",
                options={"maxiter": 1000, "ftol": 1e-12},
            )
            x, flag, nit = res.x, res.success, res.nit
        elif solver in ("IPOPT", "IPOPT-lbfgs"):
            from .ipopt import solve_scaling

            x, status, _ = solve_scaling(p, fun, grad, hess=solver == "IPOPT")
            flag, nit = status == 0, None
        else:
            raise ValueError(f"unknown solver {solver!r}")
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {
        "time": elapsed,
        "cpu": cpu,
        "nfev": counts["f"],
        "njev": counts["g"],
        "flag": bool(flag),
        "f": p.fun(x),
        "viol": p.violation(x),
        "nit": nit,
    }
