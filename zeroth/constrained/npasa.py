"""NPASA: two-phase method for min f(z) s.t. h(z) = 0, z ∈ Ω (Diffenderfer & Hager,
arXiv:2107.07479 / 2107.07478).

**Phase one** — augmented Lagrangian L_A = f + λᵀh + ρ/2‖h‖², each subproblem minimised over
the polyhedron Ω by :func:`.pasa.minimize_polyhedral` (linear constraints and bounds never
penalised), starting from B = ∇²L(λ + ρh) + ρ∇hᵀ∇h (the phase-two Hessian of the Lagrangian
plus the exact Gauss–Newton part), at most max(200, 20N) iterations each. Updates (Conn–Gould–
Toint style, our constants): if ‖h‖∞ ≤ η then λ ← λ + ρh, η ← η/10, ω ← ω/10; else ρ ← 10ρ,
η ← 0.1ρ^-0.1, ω ← 0.1/ρ.

**Phase two** — two error estimators at (z, λ):

    E_c = ‖h(z)‖∞                                (nonlinear-constraint violation)
    E_m = ‖z − P_Ω(z − ∇_z L(z, λ))‖∞           (stationarity / multiplier error)

and a *balanced reduction*: if E_c > θ·E_m a **constraint step** (the least-norm step onto the
linearisation h + ∇h d = 0 inside Ω, a Newton step for h = 0 that never leaves the
polyhedron), otherwise a **multiplier step**: the Newton (SQP) step of the KKT system over Ω,

    min_d ½ dᵀH d + ∇fᵀd   s.t.   h + ∇h d = 0,   z + d ∈ Ω,

whose multipliers on the linearised rows are the new λ (Goldfarb–Idnani, :mod:`._qp`; the
polyhedral constraints stay exact, so the QP also picks the active face). θ = 1.
Choices where the papers leave them open, all ours:

* H is ∇²_zz L: exact when the user gives ``hess`` (and constraint Hessians), forward
  differences of ∇L with ``hess="2-point"``, otherwise (the default) a damped BFGS matrix of
  the Lagrangian, B₀ sized so the first step is at most max(1, ‖x‖∞), kept across visits. The QP
  needs a positive definite matrix: the reduced Hessian on the null space of ∇h gets its
  eigenvalues flipped and floored where it is not positive definite, then ρ∇hᵀ∇h is added (same
  solution, since ∇h d = −h is fixed; λ corrected by −ρh). If the linearisation is
  inconsistent with Ω, the rows ask only for the change in h the constraint step achieves.
* Acceptance. A step is accepted by the *estimators* — no objective value needed, as in
  NPASA's local phase — when it cuts E = max(E_c, E_m) to ≤ 0.9 of the best E of the visit
  (a constraint step: when it halves E_c). A multiplier step they reject is tried along an
  Armijo search on the ℓ1 merit f + Σνᵢ|hᵢ| (unit step first; per-constraint weights, Powell's
  update plus a feasibility-steering lower bound), which globalises phase two like SLSQP; if
  that fails too, or the QP does, or a value is NaN, control returns to phase one from the
  last accepted point. Slacks are reset to clip(c(x)) after every step.
* Phase two runs first, from x0 with least-squares multipliers (argmin ‖∇f + ∇hᵀλ + Wᵀμ‖ over
  the constraints W of Ω active at x0): on most problems the solver never enters phase one.
  Otherwise phase two is retried after every phase-one iteration, so asymptotically only
  phase two runs; its unit Newton steps give the local quadratic rate.
* Differences: while max(E_c, E_m/s) > ROUGH (s = max(1, ‖∇f‖∞)) gradients may be one-sided
  (``Functions.rough_ok``); convergence is only ever declared on precise ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._functions import NonFiniteError
from ._qp import solve_qp
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
    max_phase_two_steps: int = 200


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


ROUGH = 1e-4  # above this relative error level one-sided differences are accurate enough


def _measured(nlp, z, lam, errs):
    """The errors ``errs`` at (z, λ), measured with gradients accurate enough for them: one-sided
    (rough) differences are allowed while max(E_c, E_m/s) > ROUGH (``Functions.rough_ok``);
    below it they are measured again with precise ones (exact gradients: from the cache)."""
    Ec, Em, scale = errs
    far = max(Ec, Em / scale) > ROUGH
    if nlp.F.rough_ok and not far:
        nlp.F.rough_ok = False
        return _errors(nlp, z, lam)
    nlp.F.rough_ok = far
    return errs


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
    nlp.F.rough_ok = True  # until the errors say otherwise (see _measured)
    try:
        return _solve(run)
    except Exception as exc:  # attach the run for failure reporting
        exc.run = run
        raise
    finally:
        nlp.F.rough_ok = False


def _solve(run):
    nlp, opts = run.nlp, run.opts
    z, mh = run.z, nlp.mh
    lam = np.zeros(mh)
    if mh:
        lam = _ls_multipliers(nlp, z, nlp.poly.active_matrix(z, 1e-9)[0])[0]
    run.lam = lam
    hess = _LagrangianHessian(nlp, opts.hess_mode)
    z, lam, done = _phase_two(run, z, lam, hess)
    run.z, run.lam = z, lam
    if done:
        return z, lam, 0, run
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
        nlp.F.rough_ok = omega > ROUGH
        B = _al_hessian(nlp, hess, z, lam, rho)
        res = minimize_polyhedral(value, grad, z, nlp.poly, omega, max(200, 20 * nlp.N), B=B, on_iter=run.tick)
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
        Ec, Em, scale = _measured(nlp, z, lam, _errors(nlp, z, lam))
        _remember(run, z, lam, Ec, Em, scale)
        run.history.append({"phase": 1, "nit": run.nit, "E_c": Ec, "E_m": Em, "penalty": rho})
        if _converged(run, Ec, Em, scale):
            return z, lam, 0, run
        z, lam, done = _phase_two(run, z, lam, hess)
        run.z, run.lam = z, lam
        if done:
            return z, lam, 0, run
        if mh and rho > 1e12:
            Ec, Em, scale = _errors(nlp, z, lam)
            raise StopSolver(6 if Ec > opts.ctol else 7)
        if not mh and res.reason == "linesearch" and outer > 3:
            raise StopSolver(7)
    raise StopSolver(7)


def _al_hessian(nlp, hess, z, lam, rho):
    """Starting matrix of a phase-one subproblem: ∇²L(z, λ + ρh) + ρ∇hᵀ∇h, shifted positive definite."""
    if nlp.mh:
        h, J = nlp.h(z), nlp.J(z)
        H = hess.at(z, lam + rho * h) + rho * (J.T @ J)
    else:
        H = hess.at(z, lam)
    H = 0.5 * (H + H.T)
    size = max(1.0, float(np.max(np.abs(H), initial=0.0)))
    lo = float(np.linalg.eigvalsh(H).min())
    if lo < 1e-6 * size:
        H = H + (1e-6 * size - lo) * np.eye(H.shape[0])
    return H


def _ls_multipliers(nlp, z, W):
    """Least-squares multipliers (λ, μ) of ∇f + ∇hᵀλ + Wᵀμ = 0."""
    M = np.vstack([nlp.J(z), W])
    if M.shape[0] == 0:
        return np.zeros(0), np.zeros(0)
    y = np.linalg.lstsq(M.T, -nlp.g(z), rcond=None)[0]
    return y[: nlp.mh], y[nlp.mh:]


class _LagrangianHessian:
    """∇²_zz L for the multiplier steps: exact, forward differences of ∇L, or damped BFGS on the
    x-block (slacks enter L linearly). The BFGS matrix lives across phase-two visits."""

    def __init__(self, nlp, mode):
        self.nlp, self.mode, self.Bx, self.scaled = nlp, mode, None, False

    def at(self, z, lam):
        nlp = self.nlp
        if self.mode != "bfgs":
            return nlp.hess_lagrangian(z, lam, self.mode)
        if self.Bx is None:  # first step no longer than max(1, ‖x‖∞)
            x, gx = z[: nlp.n], nlp.F.g(z[: nlp.n])
            self.Bx = max(1.0, float(np.max(np.abs(gx))) / max(1.0, float(np.max(np.abs(x))))) * np.eye(nlp.n)
        H = np.zeros((nlp.N, nlp.N))
        H[: nlp.n, : nlp.n] = self.Bx
        return H

    def update(self, s, y):
        """Damped BFGS update with s = Δx, y = Δ∇_x L at the new multipliers; before the first update
        B₀ = I is rescaled to yᵀy/sᵀy·I (Shanno–Phua) when s and y are not nearly orthogonal."""
        if self.mode != "bfgs":
            return
        n = self.nlp.n
        s, y = s[:n], y[:n]
        sy = float(s @ y)
        if self.Bx is None:
            self.Bx = np.eye(n)
        if not self.scaled and sy > 1e-2 * float(np.linalg.norm(s) * np.linalg.norm(y)):
            self.Bx, self.scaled = (float(y @ y) / sy) * np.eye(n), True
        self.Bx = bfgs_update(self.Bx, s, y)

    def reset(self):
        """Forget the BFGS matrix (a step it gave was negligible); False if there is none to forget."""
        if self.mode != "bfgs" or self.Bx is None:
            return False
        self.Bx, self.scaled = None, False
        return True


FLIP_FLOOR = 1e-4  # smallest curvature (relative to max|H|) a flipped eigenvalue gets: keeps the QP well conditioned


def _positive_definite(H, J):
    """A positive definite matrix for the step QP, returned with ρ: on the null space Z of ∇h the
    reduced Hessian ZᵀHZ = VΛVᵀ gets max(|Λ|, FLIP_FLOOR·max|H|) for Λ when it is not positive
    definite — unchanged where it is already positive
    definite, as near a strict minimiser — then ρ∇hᵀ∇h is added, which leaves the solution on
    {∇h d = −h} unchanged (the caller corrects λ by −ρh)."""
    N = H.shape[0]
    H = 0.5 * (H + H.T)
    size = max(1.0, float(np.max(np.abs(H), initial=0.0)))
    floor = 1e-8 * size
    Z = null_space(J, N)
    if Z.shape[1]:
        w, V = np.linalg.eigh(Z.T @ H @ Z)
        if w.min() < floor:
            ZV = Z @ V
            H = H + (ZV * (np.maximum(np.abs(w), FLIP_FLOOR * size) - w)) @ ZV.T
    if J.shape[0] == 0:
        return H, 0.0
    JJ = J.T @ J
    rho = 0.0
    for _ in range(8):
        Hr = H + rho * JJ
        if float(np.linalg.eigvalsh(Hr).min()) > floor:
            return Hr, rho
        rho = size / max(float(np.max(np.abs(JJ))), 1e-300) if rho == 0 else 10.0 * rho
    # ∇h nearly rank-deficient (no moderate ρ works): flip H's eigenvalues in the full space
    w, V = np.linalg.eigh(H)
    return (V * np.maximum(np.abs(w), FLIP_FLOOR * size)) @ V.T, 0.0


def _step_rows(nlp, z, h, J):
    """The rows of the step QP: linearised h (equalities) and Ω shifted to the step d."""
    poly = nlp.poly
    C = np.vstack([J, poly._C])
    Cz = poly._C @ z
    lo = np.concatenate([-h, poly._lo - Cz])
    hi = np.concatenate([-h, poly._hi - Cz])
    return C, lo, hi


def _multiplier_step(nlp, z, h, J, g, H):
    """SQP step d over Ω, the new λ and dᵀH'd, or Nones when the linearisation is inconsistent."""
    Hp, rho = _positive_definite(H, J)
    C, lo, hi = _step_rows(nlp, z, h, J)
    res = solve_qp(Hp, g, C, lo, hi)
    if res.status != "optimal" and nlp.mh:
        # inconsistent linearisation (or dependent rows that round-off made so): ask only for the
        # change in h that the least-squares constraint step achieves (Byrd–Omojokun relaxation)
        target = J @ _constraint_step(nlp, z, h, J)
        lo[: nlp.mh] = hi[: nlp.mh] = target
        res = solve_qp(Hp, g, C, lo, hi)
        h = -target
    if res.status != "optimal":
        return None, None, None
    return res.x, res.w[: nlp.mh] - rho * h, float(res.x @ Hp @ res.x)


def _constraint_step(nlp, z, h, J):
    """Least-norm step onto {h + ∇h d = 0} ∩ (Ω − z); if that set is empty, a Levenberg–Marquardt
    step for min ‖h + ∇h d‖ inside Ω."""
    N = nlp.N
    C, lo, hi = _step_rows(nlp, z, h, J)
    res = solve_qp(np.eye(N), np.zeros(N), C, lo, hi)
    if res.status == "optimal":
        return res.x
    JJ = J.T @ J
    reg = 1e-6 * max(1.0, float(np.max(np.abs(JJ), initial=0.0)))
    mh = nlp.mh
    res = solve_qp(JJ + reg * np.eye(N), J.T @ h, C[mh:], lo[mh:], hi[mh:])
    if res.status != "optimal":
        raise np.linalg.LinAlgError("no constraint step")
    return res.x


def _negligible(d, z):
    return float(np.max(np.abs(d), initial=0.0)) <= 1e-12 * (1.0 + float(np.max(np.abs(z), initial=0.0)))


def _merit_search(nlp, z, d, new_lam, g, h, nu, curv):
    """Armijo backtracking on the ℓ1 merit φ = f + Σ νᵢ|hᵢ| (slacks at their best values, so |hᵢ| is
    the violation of cᵢ) along the Newton step d, the unit step first: a step the merit accepts
    costs one objective value. νᵢ ≥ 1.1|λ⁺ᵢ| makes d a descent direction; a weight may fall again
    (Powell's rule, as in SLSQP); and Σνᵢ|hᵢ| ≥ 2(∇fᵀd + ½dᵀHd), so that half the predicted merit
    decrease comes from feasibility (Nocedal & Wright 18.36) — without it a small ν lets an
    objective unbounded off the constraints run away. Returns (t, ν), t = None when the search fails."""
    nu = np.maximum(1.1 * np.abs(new_lam) + 1e-10, 0.5 * (nu + np.abs(new_lam)))
    habs = np.abs(h)
    need = 2.0 * (float(g @ d) + 0.5 * curv)
    if need > 0 and float(habs.sum()) > 0 and float(nu @ habs) < need:
        nu = nu + (need - float(nu @ habs)) / float(habs.sum())
    slope = float(g @ d) - float(nu @ np.abs(h))
    if not slope < 0:
        return None, nu
    phi0 = nlp.f(z) + float(nu @ np.abs(h))
    t = 1.0
    for _ in range(8):
        try:
            y = nlp.with_best_slacks(np.clip(z + t * d, nlp.poly.lb, nlp.poly.ub))
            phi = nlp.f(y) + float(nu @ np.abs(nlp.h(y)))
            if phi <= phi0 + 1e-4 * t * slope:
                return t, nu
            denom = 2.0 * (phi - phi0 - slope * t)
            tq = -slope * t * t / denom if denom > 0 else 0.5 * t
        except NonFiniteError:
            tq = 0.1 * t
        t = min(0.5 * t, max(0.1 * t, tq))
    return None, nu


def _phase_two(run, z, lam, hess):
    """Balanced-reduction Newton steps from (z, λ); returns (z, λ, converged) at the last point
    accepted (the given one when no step was)."""
    nlp, opts, poly = run.nlp, run.opts, run.nlp.poly
    mh = nlp.mh
    try:
        Ec, Em, scale = _errors(nlp, z, lam)
        if mh:
            lam_ls = _ls_multipliers(nlp, z, poly.active_matrix(z, 1e-9)[0])[0]
            Ec2, Em2, _ = _errors(nlp, z, lam_ls)
            if Em2 < Em:
                lam, Em = lam_ls, Em2
    except NonFiniteError:
        return z, lam, False
    _remember(run, z, lam, Ec, Em, scale)
    E_best, nu = max(Ec, Em), np.zeros(mh)
    for _ in range(opts.max_phase_two_steps):
        try:
            Ec, Em, scale = _measured(nlp, z, lam, (Ec, Em, scale))
        except NonFiniteError:
            break
        if _converged(run, Ec, Em, scale):
            return z, lam, True
        try:
            step = _balanced_step(nlp, opts, hess, z, lam, Ec, Em, E_best, nu)
        except (NonFiniteError, np.linalg.LinAlgError):
            step = None  # phase two cannot go on from here: back to phase one
        if step is None:
            break
        kind, accept, znew, new_lam, (Ecn, Emn, scalen), nu, gL_old = step
        run.history.append({"phase": 2, "step": kind, "accept": accept, "nit": run.nit + 1, "E_c": Ecn, "E_m": Emn})
        if accept is None:
            break
        try:
            hess.update(znew - z, nlp.grad_lagrangian(znew, new_lam) - gL_old)
        except NonFiniteError:
            break
        z, lam, Ec, Em, scale = znew, new_lam, Ecn, Emn, scalen
        E_best = min(E_best, max(Ec, Em))
        _remember(run, z, lam, Ec, Em, scale)
        run.tick(z)
    if nlp.F.rough_ok:
        return z, lam, False
    return z, lam, _converged(run, Ec, Em, scale)


def _balanced_step(nlp, opts, hess, z, lam, Ec, Em, E_best, nu):
    """One phase-two step: (kind, accepted by "estimators" | "merit" | None, z⁺, λ⁺, errors at z⁺, ν,
    ∇L(z, λ⁺)), or None when no step can be formed."""
    poly, mh = nlp.poly, nlp.mh
    h, J, g = nlp.h(z), nlp.J(z), nlp.g(z)
    if mh and Ec > opts.theta * Em:
        d = _constraint_step(nlp, z, h, J)
        znew = nlp.with_best_slacks(np.clip(z + d, poly.lb, poly.ub))
        errs = _errors(nlp, znew, lam)
        if errs[0] <= 0.5 * Ec:  # a constraint step must halve the violation; E_m is judged next
            return "constraint", "estimators", znew, lam, errs, nu, g + J.T @ lam
    d, new_lam, curv = _multiplier_step(nlp, z, h, J, g, hess.at(z, lam))
    if d is not None and _negligible(d, z) and hess.reset():
        d, new_lam, curv = _multiplier_step(nlp, z, h, J, g, hess.at(z, lam))
    if d is None or _negligible(d, z):
        return None
    gL_old = g + J.T @ new_lam if mh else g
    znew = nlp.with_best_slacks(np.clip(z + d, poly.lb, poly.ub))
    errs = _errors(nlp, znew, new_lam)
    if max(errs[0], errs[1]) <= 0.9 * E_best:
        return "multiplier", "estimators", znew, new_lam, errs, nu, gL_old
    t, nu = _merit_search(nlp, z, d, new_lam, g, h, nu, curv)
    if t is None:
        return "multiplier", None, znew, new_lam, errs, nu, gL_old
    if t < 1.0:
        znew = nlp.with_best_slacks(np.clip(z + t * d, poly.lb, poly.ub))
        new_lam = lam + t * (new_lam - lam)
        gL_old = g + J.T @ new_lam if mh else g
        errs = _errors(nlp, znew, new_lam)
    return "multiplier", "merit", znew, new_lam, errs, nu, gL_old
