"""NPASA: two-phase method for min f(z) s.t. h(z) = 0, z ∈ Ω (Diffenderfer & Hager,
arXiv:2107.07479 / 2107.07478).

**Phase one** — augmented Lagrangian L_A = f + λᵀh + ρ/2‖h‖², each subproblem minimised over
the polyhedron Ω by :func:`.pasa.minimize_polyhedral` (linear constraints and bounds never
penalised). Updates (Conn–Gould–Toint style, our constants): if ‖h‖∞ ≤ η then λ ← λ + ρh,
η ← η/10, ω ← ω/10; else ρ ← 10ρ, η ← 0.1ρ^-0.1, ω ← 0.1/ρ.

**Phase two** — two error estimators at (z, λ):

    E_c = ‖h(z)‖∞                                (nonlinear-constraint violation)
    E_m = ‖z − P_Ω(z − ∇_z L(z, λ))‖∞           (stationarity / multiplier error)

and a *balanced reduction*: if E_c > θ·E_m a **constraint step** (minimum-norm Newton step for
h = 0 that keeps the active polyhedral constraints W fixed: d = −M⁺[h; 0], M = [∇h; W]),
otherwise a **multiplier step** (Newton step on the KKT system of the active face,
[[H, Mᵀ], [M, 0]] [d; y] = [−∇f; −h; 0], giving new multipliers y). θ = 1.
Choices where the papers leave them open, all ours:

* The multiplier step is one Newton (equality-QP) step of NPASA's linearly constrained
  Lagrangian subproblem rather than a full inner solve — same local rate, far fewer evaluations.
* H is the exact Hessian of the Lagrangian when the user gives ``hess`` (and constraint
  Hessians), otherwise forward differences of ∇L (exact gradients) or the phase-one BFGS
  matrix, which on the null space of ∇h equals ∇²L because ρ∇hᵀ∇h vanishes there.
  If the reduced Hessian is not positive definite it is shifted (δI).
* The active set W starts as the polyhedral constraints active at the phase-one point; a
  constraint whose multiplier has the wrong sign is dropped, one that blocks a step is added.
* Initial phase-two multipliers: the better (smaller E_m) of the phase-one λ and the
  least-squares estimate argmin ‖∇f + ∇hᵀλ + Wᵀμ‖.
* Switching test: a step is accepted while E = max(E_c, E_m) decreases; three consecutive
  steps that do not halve E, any step that does not decrease it, or a failed linear solve
  return control to phase one (from the best point seen) — phase two is retried after every
  phase-one iteration, so asymptotically only phase two runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._functions import NonFiniteError
from .pasa import bfgs_update, minimize_polyhedral, null_space

__all__ = ["NPASAOptions", "run_npasa", "StopSolver"]


@dataclass
class NPASAOptions:
    gtol: float = 1e-8
    ctol: float = 1e-8
    maxiter: int = 3000
    penalty: float = 10.0
    theta: float = 1.0
    hess_mode: str = "bfgs"  # "exact" | "2-point" | "bfgs"
    max_phase_two_steps: int = 50


class StopSolver(Exception):
    """Ends the run with a status code (budget, iteration limit, callback, infeasibility)."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


@dataclass
class _Run:
    nlp: object
    opts: NPASAOptions
    callback: object
    z: np.ndarray = None
    lam: np.ndarray = None
    nit: int = 0
    history: list = field(default_factory=list)
    best: tuple = None  # (E, z, lam)

    def tick(self, z):
        self.nit += 1
        if self.callback is not None:
            self.callback(self.nlp.x(z))
        if self.nit >= self.opts.maxiter:
            raise StopSolver(1)


def _errors(nlp, z, lam):
    """(E_c, E_m, gradient scale) at (z, λ)."""
    h = nlp.h(z)
    Ec = float(np.max(np.abs(h), initial=0.0))
    gL = nlp.grad_lagrangian(z, lam)
    Em = float(np.max(np.abs(nlp.poly.project(z - gL) - z), initial=0.0))
    scale = max(1.0, float(np.max(np.abs(nlp.g(z)), initial=0.0)))
    return Ec, Em, scale


def _converged(run, Ec, Em, scale):
    return Ec <= run.opts.ctol and Em <= run.opts.gtol * scale


def _remember(run, z, lam, Ec, Em, scale):
    E = max(Ec, Em / scale)
    if run.best is None or E < run.best[0]:
        run.best = (E, z.copy(), lam.copy())


def run_npasa(nlp, z0, opts: NPASAOptions, callback=None):
    """Run NPASA from z0 ∈ Ω; returns (z, λ, status, run). Raises StopSolver/NonFiniteError/BudgetError
    with ``run`` attached so the caller can report the best point reached."""
    run = _Run(nlp, opts, callback, z=z0.copy())
    try:
        return _solve(run)
    except Exception as exc:  # attach the run for failure reporting
        exc.run = run
        raise


def _solve(run):
    nlp, opts = run.nlp, run.opts
    z, mh = run.z, nlp.mh
    lam = np.zeros(mh)
    if mh:
        lam = _ls_multipliers(nlp, z, nlp.poly.active_matrix(z, 1e-9)[0])[0]
    run.lam = lam
    rho, omega, eta = opts.penalty, 1e-1, 1e-1
    B = None
    for outer in range(200):
        if mh:
            def value(y, lam=lam, rho=rho):
                h = nlp.h(y)
                return nlp.f(y) + lam @ h + 0.5 * rho * (h @ h)

            def grad(y, lam=lam, rho=rho):
                return nlp.g(y) + nlp.J(y).T @ (lam + rho * nlp.h(y))
        else:
            value, grad = nlp.f, nlp.g
        res = minimize_polyhedral(value, grad, z, nlp.poly, omega, opts.maxiter, B=B, on_iter=run.tick)
        z, B = res.z, res.B
        if mh:
            h = nlp.h(z)
            if np.max(np.abs(h)) <= eta:
                lam = lam + rho * h
                eta, omega = max(eta / 10, 1e-3 * opts.ctol), max(omega / 10, 1e-3 * opts.gtol)
            else:
                rho *= 10.0
                eta, omega = max(0.1 / rho ** 0.1, 1e-3 * opts.ctol), max(0.1 / rho, 1e-3 * opts.gtol)
        else:
            omega = max(omega / 10, 1e-3 * opts.gtol)
        run.z, run.lam = z, lam
        Ec, Em, scale = _errors(nlp, z, lam)
        _remember(run, z, lam, Ec, Em, scale)
        run.history.append({"phase": 1, "nit": run.nit, "E_c": Ec, "E_m": Em, "penalty": rho})
        if _converged(run, Ec, Em, scale):
            return z, lam, 0, run
        z2, lam2, B2, done = _phase_two(run, z, lam, B)
        if done:
            run.z, run.lam = z2, lam2
            return z2, lam2, 0, run
        if z2 is not None:
            z, lam = z2, lam2
            run.z, run.lam = z, lam
        if mh and rho > 1e12:
            Ec, Em, scale = _errors(nlp, z, lam)
            raise StopSolver(6 if Ec > opts.ctol else 7)
        if not mh and res.reason == "linesearch" and outer > 3:
            raise StopSolver(7)
    raise StopSolver(7)


def _ls_multipliers(nlp, z, W):
    """Least-squares multipliers (λ, μ) of ∇f + ∇hᵀλ + Wᵀμ = 0."""
    M = np.vstack([nlp.J(z), W])
    if M.shape[0] == 0:
        return np.zeros(0), np.zeros(0)
    y = np.linalg.lstsq(M.T, -nlp.g(z), rcond=None)[0]
    return y[: nlp.mh], y[nlp.mh:]


def _active_list(poly, z):
    """Active polyhedral constraints as (kind, index, side) with side ∈ {'lo', 'up', 'eq'}."""
    at_lb, at_ub, at_l, at_u = poly.active(z, 1e-9)
    act = []
    for i in np.flatnonzero(at_lb | at_ub):
        act.append(("b", int(i), "eq" if poly.lb[i] == poly.ub[i] else ("lo" if at_lb[i] else "up")))
    for r in np.flatnonzero(at_l | at_u):
        act.append(("a", int(r), "eq" if poly.l[r] == poly.u[r] else ("lo" if at_l[r] else "up")))
    return act


def _rows(poly, act):
    n = poly.n
    W = np.zeros((len(act), n))
    for k, (kind, i, _) in enumerate(act):
        if kind == "b":
            W[k, i] = 1.0
        else:
            W[k] = poly.A[i]
    return W


def _phase_two(run, z, lam, B):
    """Balanced-reduction Newton steps; returns (z, λ, B, converged) or (None, …) when nothing improved."""
    nlp, opts, poly = run.nlp, run.opts, run.nlp.poly
    N, mh = nlp.N, nlp.mh
    act = _active_list(poly, z)
    W = _rows(poly, act)
    lam_ls = _ls_multipliers(nlp, z, W)[0] if mh else lam
    try:
        Ec, Em, scale = _errors(nlp, z, lam)
        if mh:
            Ec2, Em2, _ = _errors(nlp, z, lam_ls)
            if Em2 < Em:
                lam, Em = lam_ls, Em2
    except NonFiniteError:
        return None, None, B, False
    E = max(Ec, Em / scale)
    start_E, slow, E_ref = E, 0, E
    z0, lam0 = z, lam
    for _ in range(opts.max_phase_two_steps):
        if _converged(run, Ec, Em, scale):
            return z, lam, B, True
        try:
            h, J, g = nlp.h(z), nlp.J(z), nlp.g(z)
            for _drop in range(len(act) + 1):
                W = _rows(poly, act)
                M = np.vstack([J, W])
                if Ec > opts.theta * Em:
                    kind = "constraint"
                    rhs = np.concatenate([h, np.zeros(len(act))])
                    d = -np.linalg.lstsq(M, rhs, rcond=None)[0] if M.shape[0] else np.zeros(N)
                    new_lam = lam
                    break
                kind = "multiplier"
                H = B if opts.hess_mode == "bfgs" else nlp.hess_lagrangian(z, lam, opts.hess_mode)
                H = _convexify(H, M, N)
                K = np.block([[H, M.T], [M, np.zeros((M.shape[0], M.shape[0]))]])
                rhs = np.concatenate([-g, -h, np.zeros(len(act))])
                sol = np.linalg.lstsq(K, rhs, rcond=None)[0] if M.shape[0] else np.linalg.solve(H, -g)
                d, y = sol[:N], sol[N:]
                new_lam, mu = y[:mh], y[mh:]
                wrong = [k for k, (_, _, side) in enumerate(act)
                         if (side == "lo" and mu[k] > 1e-10 * scale) or (side == "up" and mu[k] < -1e-10 * scale)]
                if not wrong:
                    break
                worst = max(wrong, key=lambda k: abs(mu[k]))
                del act[worst]
            d = _onto_face(poly, act, d)
            tmax, which = poly.max_step(z, d)
            partial = tmax < 1.0
            znew = np.clip(z + min(1.0, tmax) * d, poly.lb, poly.ub)
            if partial and which is not None:
                kind_b, idx = which
                side = "lo" if kind_b in ("lb", "l") else "up"
                entry = ("b" if kind_b in ("lb", "ub") else "a", idx, side)
                if entry not in act:
                    act.append(entry)
            Ecn, Emn, scalen = _errors(nlp, znew, new_lam)
        except (NonFiniteError, np.linalg.LinAlgError):
            break  # phase two cannot go on from here: back to phase one
        Enew = max(Ecn, Emn / scalen)
        run.history.append({"phase": 2, "step": kind, "nit": run.nit + 1, "E_c": Ecn, "E_m": Emn})
        if kind == "constraint":
            if not Ecn <= 0.5 * Ec:  # a constraint step must cut the violation; E_m is judged next
                break
        elif not Enew < E_ref:
            break
        if opts.hess_mode == "bfgs" and B is not None:
            B = bfgs_update(B, znew - z, nlp.grad_lagrangian(znew, new_lam) - nlp.grad_lagrangian(z, new_lam))
        if kind == "multiplier":
            slow = slow + 1 if Enew > 0.5 * E_ref else 0
            E_ref = Enew
        z, lam, E, Ec, Em, scale = znew, new_lam, Enew, Ecn, Emn, scalen
        _remember(run, z, lam, Ec, Em, scale)
        run.z, run.lam = z, lam
        run.tick(z)
        if slow >= 3:
            break
    if _converged(run, Ec, Em, scale):
        return z, lam, B, True
    if E < start_E or (z is not z0 and Ec < 0.5 * max(start_E, 1e-300)):
        return z, lam, B, False
    return None, None, B, False


def _onto_face(poly, act, d):
    """Remove the round-off component of d along active constraints (lstsq leaves ~1e-16·‖K‖)."""
    d = d.copy()
    rows = []
    for kind, i, _ in act:
        if kind == "b":
            d[i] = 0.0
        else:
            rows.append(i)
    if rows:
        W = poly.A[rows]
        free = np.ones(poly.n, dtype=bool)
        free[[i for kind, i, _ in act if kind == "b"]] = False
        Wf = W[:, free]
        if Wf.size:
            d[free] -= Wf.T @ np.linalg.lstsq(Wf @ Wf.T, Wf @ d[free], rcond=None)[0]
    return d


def _convexify(H, M, N):
    """Shift H by δI until it is positive definite on the null space of M."""
    Z = null_space(M, N)
    if Z.shape[1] == 0:
        return H
    Hz = Z.T @ H @ Z
    lo = float(np.linalg.eigvalsh(0.5 * (Hz + Hz.T)).min())
    floor = 1e-8 * max(1.0, float(np.max(np.abs(H), initial=0.0)))
    if lo >= floor:
        return H
    return H + (floor - lo + 1e-8) * np.eye(N)
