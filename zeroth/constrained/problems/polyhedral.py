"""Larger polyhedral problems (n ≥ 100) whose optimum is known by construction.

Each is min φ(x) + qᵀx over bounds and linear rows, with φ convex: we pick x*, its active
constraints and multipliers of the right sign, then set q = −∇φ(x*) − Wᵀμ, so x* satisfies
the KKT conditions of a convex problem and is a global minimiser; f* = f(x*).
"""

from __future__ import annotations

import numpy as np
import torch

from ._base import Problem

__all__ = ["polyhedral_problems"]


def _kkt_problem(name, n, m, phi, seed):
    rng = np.random.default_rng(seed)
    x_star = rng.uniform(-1.0, 1.0, n)
    lb, ub = np.full(n, -2.0), np.full(n, 2.0)
    at_lb = rng.choice(n, n // 5, replace=False)
    rest = np.setdiff1d(np.arange(n), at_lb)
    at_ub = rng.choice(rest, n // 10, replace=False)
    x_star[at_lb], x_star[at_ub] = lb[at_lb], ub[at_ub]
    A = rng.normal(size=(m, n)) / np.sqrt(n)
    Ax = A @ x_star
    act = np.arange(m // 2)  # first half of the rows active at their upper side, the rest slack
    lin_lb = Ax - rng.uniform(0.5, 1.5, m)
    lin_ub = Ax + rng.uniform(0.5, 1.5, m)
    lin_ub[act] = Ax[act]
    mu_rows = np.zeros(m)
    mu_rows[act] = rng.uniform(0.1, 1.0, act.size)  # ≥ 0 at upper sides
    mu_b = np.zeros(n)
    mu_b[at_lb] = -rng.uniform(0.1, 1.0, at_lb.size)  # ≤ 0 at lower bounds
    mu_b[at_ub] = rng.uniform(0.1, 1.0, at_ub.size)
    xt = torch.as_tensor(x_star, dtype=torch.float64).requires_grad_(True)
    (g_phi,) = torch.autograd.grad(phi(xt), xt)
    q = torch.as_tensor(-g_phi.numpy() - A.T @ mu_rows - mu_b, dtype=torch.float64)

    def f(x, phi=phi, q=q):
        return phi(x) + q @ x

    f_opt = float(f(torch.as_tensor(x_star, dtype=torch.float64)))
    x0 = np.zeros(n)
    return Problem(name, x0, f_opt, f, lb=lb, ub=ub, A=A, lin_lb=lin_lb, lin_ub=lin_ub, x_opt=x_star)


def polyhedral_problems():
    """Three problems with n = 100, 120, 150 (quadratic, log-sum-exp and quartic objectives)."""
    rng = np.random.default_rng(7)
    Q = rng.normal(size=(100, 100)) / 10
    H = torch.as_tensor(Q @ Q.T + np.eye(100), dtype=torch.float64)
    G = torch.as_tensor(rng.normal(size=(60, 120)) / 5, dtype=torch.float64)
    return [
        _kkt_problem("qp100", 100, 30, lambda x: 0.5 * x @ (H @ x), seed=1),
        _kkt_problem("lse120", 120, 40, lambda x: torch.logsumexp(G @ x, 0) + 0.05 * (x @ x), seed=2),
        _kkt_problem("quartic150", 150, 50, lambda x: 0.25 * (x**4).sum() + 0.5 * (x @ x), seed=3),
    ]
