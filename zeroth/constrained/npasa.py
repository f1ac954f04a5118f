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
* Acceptance. A step is accepted by the *estimators*, as in NPASA's local phase, when it cuts
  E = max(E_c, E_m) to ≤ 0.9 of the best E of the visit (a constraint step: when it halves
  E_c) *and* f is finite there (one objective value per accepted step: a point where f is
  NaN/inf is never accepted). A multiplier step they reject is tried along an
  Armijo search on the ℓ1 merit f + Σνᵢ|hᵢ| (unit step first; per-constraint weights, Powell's
  update plus a feasibility-steering lower bound), which globalises phase two like SLSQP; if
  that fails too, or the QP does, control returns to phase one from the last accepted point.
  A NaN/inf at a trial point counts as a failed trial (backtracking); at an accepted point it
  ends the run (status 3 for the objective and its gradient, 4 for the constraints), and a run
  that ends without progress after meeting one reports that status instead of 7. Slacks are
  reset to clip(c(x)) after every step.
* Phase two runs first, from x0 with least-squares multipliers (argmin ‖∇f + ∇hᵀλ + Wᵀμ‖ over
  the constraints W of Ω active at x0): on most problems the solver never enters phase one.
  Otherwise phase two is retried after every phase-one iteration, so asymptotically only
  phase two runs; its unit Newton steps give the local quadratic rate.
* Differences: while max(E_c, E_m/s) > ROUGH (s = max(1, ‖∇f‖∞)) gradients may be one-sided
  (``rough=True`` passed to the gradient calls; the run's own setting, shared with nothing
  else); convergence is only ever declared on precise ones.
* E_m is computed as ‖P_{Ω−z}(−∇L)‖∞ (the projection of −∇L onto Ω shifted to z), not as
  ‖P_Ω(z − ∇L) − z‖∞, which rounds to 0 once |z| ≳ 2⁵³|∇L|. An iterate with ‖x‖∞ > 1e20
  (IPOPT's ``diverging_iterates_tol``) ends the run with status 9.
* On a stop other than success the returned point is the best iterate by the merit
  (max(violation, ctol), f), compared lexicographically: the least violation first, then f.
* Large problems (N + rows > :data:`._qp.DENSE_LIMIT`, or sparse data): the step QPs go to
  the sparse back end of :mod:`._qp` with H's x-block made positive definite by a multiple of
  I (Cholesky/LDLᵀ tests, as IPOPT's inertia correction) instead of the dense eigenvalue flip
  (a diagonal H is passed as its diagonal). Each QP is warm-started: a step QP from its
  predecessor's active set and the last projection's, a projection from the active set of the
  step that led to the point (``Polyhedron.hint``) and the last projection's.
* Deferred E_m (large problems): the projection behind E_m is the costliest part of a step, and
  most decisions do not need its value: E_m is kept as a :class:`Stationarity` with exact
  bounds (coordinates that no linear row couples are projected exactly by clipping; the others
  lie in their box) and projected only when a comparison — θ·E_m < E_c, max(E_c, E_m) ≤
  0.9·E_best, E_m ≤ gtol·s, the one-sided-differences switch — is not decided by the bounds.
  Every decision is the one the exact value gives, so the iterates are the same (a test
  compares against computing E_m everywhere); the phase history then has ``E_m`` None where it
  was never needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import lsqr, splu

from ._functions import NonFiniteError
from ._qp import DENSE_LIMIT, solve_qp
from .pasa import DampedBFGS, minimize_polyhedral, null_space

if TYPE_CHECKING:
    from ._nlp import NLP

__all__ = ["NPASAOptions", "Run", "run_npasa", "StopSolver", "DIVERGING"]

DIVERGING = 1e20  # ‖x‖∞ beyond which the iterates are declared diverging (status 9)
ROUGH = 1e-4  # above this relative error level one-sided differences are accurate enough


@dataclass
class NPASAOptions:
    """The solver's options, read from ``minimize(..., options=)`` (see :func:`zeroth.constrained.minimize`).

    Attributes:
        gtol: tolerance on the multiplier error estimator E_m (stationarity).
        ctol: tolerance on the constraint error estimator E_c (feasibility).
        maxiter: iteration limit (status 1 when reached).
        penalty: initial penalty ρ of phase one's augmented Lagrangian.
        theta: balanced-reduction ratio: a phase-two step reduces the constraint violation first
            (a constraint step) when θ·E_m < E_c, else it takes a multiplier (Newton) step.
        hess_mode: ``"exact"`` (the user's Hessian), ``"2-point"`` (finite differences of
            gradients) or ``"bfgs"`` (damped BFGS).
        max_phase_two_steps: phase-two steps per visit before the error estimators are checked.
    """

    gtol: float = 1e-8
    ctol: float = 1e-8
    maxiter: int = 3000
    penalty: float = 10.0
    theta: float = 1.0
    hess_mode: str = "bfgs"  # "exact" | "2-point" | "bfgs"
    max_phase_two_steps: int = 200


class StopSolver(Exception):
    """Ends the run with a status code (iteration limit, divergence, infeasibility, no progress)."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


@dataclass
class Run:
    """State of one solve: the current and best iterates, counters, history, the derivative
    precision in use (``rough``) and the last non-finite value met at a trial point."""

    nlp: NLP
    opts: NPASAOptions
    callback: Any
    z: Optional[np.ndarray] = None
    lam: Optional[np.ndarray] = None
    nit: int = 0
    history: list = field(default_factory=list)
    best: Optional[tuple] = None  # (merit key, z, lam)
    rough: bool = True
    nonfinite: Optional[NonFiniteError] = None
    _ls: Optional[tuple] = None  # (key, λ) of the last least-squares multipliers

    def tick(self, z):
        """Count an iteration at ``z`` and call the user's callback with its x.

        Raises:
            StopSolver: status 9 when ‖x‖∞ > :data:`DIVERGING`, status 1 at ``maxiter``.
        """
        self.nit += 1
        if float(np.max(np.abs(z[: self.nlp.n]), initial=0.0)) > DIVERGING:
            raise StopSolver(9)
        if self.callback is not None:
            self.callback(self.nlp.x(z))
        if self.nit >= self.opts.maxiter:
            raise StopSolver(1)

    def ls_multipliers(self, z):
        """:func:`_ls_multipliers` at z with the run's derivative precision (the last one kept)."""
        key = (z.tobytes(), self.rough)
        if self._ls is None or self._ls[0] != key:
            self._ls = (key, _ls_multipliers(self.nlp, z, self.rough))
        return self._ls[1].copy()

    def note_nonfinite(self, exc):
        """Remember the last non-finite value met at a trial point (reported if the run fails)."""
        self.nonfinite = exc

    def remember(self, z, lam, Ec):
        """Keep (z, λ) if it beats the best iterate by (max(E_c, ctol), f) (f from the cache)."""
        try:
            key = (max(Ec, self.opts.ctol), self.nlp.f(z))
        except NonFiniteError as exc:
            self.note_nonfinite(exc)
            return
        if self.best is None or key < self.best[0]:
            self.best = (key, z.copy(), lam.copy())


class Stationarity:
    """E_m = ‖P_{Ω−z}(v)‖∞ (v = −∇L) at one point. On the sparse path it is computed only when a
    decision needs it (the projection is the costliest part of an iteration); until then it is
    known to lie in [``lower``, ``upper``] (:meth:`.Polyhedron.projection_bounds`: exact values of
    the coordinates that no linear row couples, the box for the others), and every comparison
    that the bounds decide is decided by them — the same decision the exact value gives. On the
    dense path it is computed at once."""

    __slots__ = ("poly", "z", "v", "lower", "upper", "exact")

    def __init__(self, poly, z, v, lazy):
        self.poly, self.z, self.v, self.exact = poly, z, v, None
        if lazy:
            self.lower, self.upper = poly.projection_bounds(z, v)
            if self.lower == self.upper:
                self.exact = self.lower
        else:
            self.value()

    def value(self):
        """E_m itself (computing the projection once, then exact bounds equal to it)."""
        if self.exact is None:
            self.exact = float(np.max(np.abs(self.poly.project_step(self.z, self.v)), initial=0.0))
            self.lower = self.upper = self.exact
        return self.exact

    def below(self, t, theta=1.0):
        """θ·E_m < t."""
        if theta * self.upper < t:
            return True
        if not theta * self.lower < t:
            return False
        return theta * self.value() < t

    def at_most(self, t):
        """E_m ≤ t."""
        if self.upper <= t:
            return True
        if self.lower > t:
            return False
        return self.value() <= t

    def record(self):
        """For the phase history: the value if it was computed, else None."""
        return self.exact


class _BestError:
    """E_best = min over the accepted points k of max(E_c,k, E_m,k), kept as its candidates so that
    a lazy E_m is computed only when a comparison with E_best needs it."""

    def __init__(self):
        self.items = []

    def add(self, Ec, em):
        self.items.append((Ec, em))
        hi = self._bounds()[1]
        self.items = [(c, e) for c, e in self.items if max(c, e.lower) <= hi]

    def _bounds(self):
        return (min(max(c, e.lower) for c, e in self.items), min(max(c, e.upper) for c, e in self.items))

    def accepts(self, Ec, em, factor):
        """max(E_c, E_m) ≤ factor·E_best for a trial point's errors (the trial's E_m is computed
        first when the bounds do not decide: its projection is warm-started from the step's QP)."""
        while True:
            lo, hi = self._bounds()
            if max(Ec, em.upper) <= factor * lo:
                return True
            if max(Ec, em.lower) > factor * hi:
                return False
            if em.exact is None:
                em.value()
                continue
            open_items = [(max(c, e.lower), e) for c, e in self.items if e.exact is None]
            if lo < hi and open_items:
                min(open_items, key=lambda item: item[0])[1].value()
                continue
            return max(Ec, em.exact) <= factor * lo


def _errors(nlp, z, lam, rough=False):
    """(E_c, E_m as a :class:`Stationarity`, gradient scale) at (z, λ)."""
    h = nlp.h(z)
    Ec = float(np.max(np.abs(h), initial=0.0))
    gL = nlp.grad_lagrangian(z, lam, rough)
    em = Stationarity(nlp.poly, z, -gL, _large(nlp))
    scale = max(1.0, float(np.max(np.abs(nlp.g(z, rough)), initial=0.0)))
    return Ec, em, scale


def _measured(run, z, lam, errs):
    """The errors ``errs`` at (z, λ), measured with gradients accurate enough for them: one-sided
    (rough) differences are allowed while max(E_c, E_m/s) > ROUGH; below it they are measured again
    with precise ones (derivatives without a one-sided variant: the same values, not measured again)."""
    Ec, em, scale = errs
    far = Ec > ROUGH or not em.at_most(ROUGH * scale)
    if run.rough and not far:
        run.rough = False
        if run.nlp.F.has_rough_variant():
            return _errors(run.nlp, z, lam, False)
        return errs
    run.rough = far
    return errs


def _converged(run, Ec, em, scale):
    return Ec <= run.opts.ctol and em.at_most(run.opts.gtol * scale)


def run_npasa(run: Run, z0):
    """Run NPASA from z0 ∈ Ω; returns (z, λ, status 0). Raises StopSolver / NonFiniteError /
    BudgetError / StopIteration; ``run`` keeps the best point reached for the report."""
    nlp, opts = run.nlp, run.opts
    z, mh = z0.copy(), nlp.mh
    run.z = z
    lam = np.zeros(mh)
    if mh:
        lam = run.ls_multipliers(z)
    run.lam = lam
    hess = _LagrangianHessian(nlp, opts.hess_mode)
    z, lam, done = _phase_two(run, z, lam, hess)
    run.z, run.lam = z, lam
    if done:
        return z, lam, 0
    rho, omega, eta = opts.penalty, 1e-1, 1e-1
    for outer in range(200):
        if mh:

            def value(y, lam=lam, rho=rho):
                h = nlp.h(y)
                return nlp.f(y) + lam @ h + 0.5 * rho * (h @ h)

            def grad(y, lam=lam, rho=rho):
                return nlp.g(y, run.rough) + nlp.J(y, run.rough).T @ (lam + rho * nlp.h(y))
        else:

            def value(y, lam=lam, rho=rho):  # the same signatures as the penalised pair
                return nlp.f(y)

            def grad(y, lam=lam, rho=rho):
                return nlp.g(y, run.rough)

        run.rough = omega > ROUGH
        B = _al_hessian(nlp, hess, z, lam, rho, run.rough)
        res = minimize_polyhedral(value, grad, z, nlp.poly, omega, max(200, 20 * nlp.N), B=B, on_iter=run.tick)
        z = res.z
        if mh:
            h = nlp.h(z)
            if np.max(np.abs(h)) <= eta:
                lam = lam + rho * h
                eta, omega = max(eta / 10, 1e-3 * opts.ctol), max(omega / 10, 1e-3 * opts.gtol)
            else:
                rho *= 10.0
                eta, omega = max(0.1 / rho**0.1, 1e-3 * opts.ctol), max(0.1 / rho, 1e-3 * opts.gtol)
        else:
            omega = max(omega / 10, 1e-3 * opts.gtol)
        run.z, run.lam = z, lam
        Ec, em, scale = _measured(run, z, lam, _errors(nlp, z, lam, run.rough))
        run.remember(z, lam, Ec)
        run.history.append({"phase": 1, "nit": run.nit, "E_c": Ec, "E_m": em.record(), "penalty": rho})
        if _converged(run, Ec, em, scale):
            return z, lam, 0
        z, lam, done = _phase_two(run, z, lam, hess)
        run.z, run.lam = z, lam
        if done:
            return z, lam, 0
        if mh and rho > 1e12:
            Ec = float(np.max(np.abs(nlp.h(z)), initial=0.0))
            raise StopSolver(6 if Ec > opts.ctol else 7)
        if not mh and res.reason == "linesearch" and outer > 3:
            raise StopSolver(7)
    raise StopSolver(7)


def _large(nlp):
    """Whether the step QPs go to the sparse back end (no dense O(N³) work per step)."""
    return nlp.poly.sparse or nlp.N + nlp.mh + nlp.poly.m > DENSE_LIMIT


def _diagonal_of(M):
    """M's diagonal if M is a sparse matrix with no off-diagonal entry, else None."""
    if not sp.issparse(M) or M.nnz > M.shape[0]:
        return None
    if M.format in ("csr", "csc"):  # at most one entry per row (column), on the diagonal
        counts = np.diff(M.indptr)
        diagonal = counts.max(initial=0) <= 1 and np.array_equal(M.indices, np.flatnonzero(counts))
        return M.diagonal() if diagonal else None
    coo = M.tocoo()
    return M.diagonal() if np.array_equal(coo.row, coo.col) else None


def _z_matrix(nlp, Hx):
    """The z-space matrix blockdiag(Hx, 0) (slacks enter L linearly), dense or sparse like Hx;
    ``Hx`` itself if it is already N×N."""
    if Hx.shape[0] == nlp.N:
        return Hx
    if sp.issparse(Hx) or _large(nlp):
        Hx = sp.csc_array(Hx)
        if not nlp.ns:
            return Hx
        indptr = np.concatenate([Hx.indptr, np.full(nlp.ns, Hx.indptr[-1])])
        return sp.csc_array((Hx.data, Hx.indices, indptr), shape=(nlp.N, nlp.N))
    H = np.zeros((nlp.N, nlp.N))
    H[: nlp.n, : nlp.n] = Hx
    return H


def _shift_to_positive_definite(Hx, floor_rel=1e-8):
    """Hx + δI positive definite, δ ≥ 0 the smallest of 0, 1e-4·s, 1e-3·s, … (s = max(1, max|Hx|))
    that passes a Cholesky (dense) or diagonal-pivot LDLᵀ (sparse) test — the inertia correction
    of IPOPT without an inertia-revealing factorisation."""
    n = Hx.shape[0]
    size = max(1.0, float(np.max(np.abs(Hx.data if sp.issparse(Hx) else Hx), initial=0.0)))
    diag = _diagonal_of(Hx)
    if diag is not None:  # a diagonal matrix: the test is its diagonal (what the LDLᵀ test sees)
        shifted = _shift_diagonal(diag, floor_rel, size)
        return Hx if shifted is diag else sp.diags_array(shifted, format="csc")
    delta = 0.0
    for _ in range(12):
        M = Hx + delta * (sp.identity(n, format="csc") if sp.issparse(Hx) else np.eye(n)) if delta else Hx
        if _positive_definite_test(M, floor_rel * size):
            return M
        delta = 1e-4 * size if delta == 0 else 10.0 * delta
    return Hx + delta * (sp.identity(n, format="csc") if sp.issparse(Hx) else np.eye(n))


def _shift_diagonal(diag, floor_rel=1e-8, size=None):
    """diag + δ, δ ≥ 0 the smallest of 0, 1e-4·s, 1e-3·s, … with every entry above floor_rel·s
    (s = max(1, max|diag|)): :func:`_shift_to_positive_definite` for a diagonal matrix (``diag``
    itself when δ = 0)."""
    size = max(1.0, float(np.max(np.abs(diag), initial=0.0))) if size is None else size
    delta = 0.0
    for _ in range(12):
        if np.all(diag + delta > floor_rel * size):
            return diag + delta if delta else diag
        delta = 1e-4 * size if delta == 0 else 10.0 * delta
    return diag + delta


def _positive_definite_test(M, floor):
    if sp.issparse(M):
        try:
            lu = splu(
                sp.csc_array(M), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True}
            )
        except RuntimeError:
            return False
        d = lu.U.diagonal()
        return bool(np.all(d > floor)) and np.array_equal(lu.perm_r, lu.perm_c)
    try:
        L = np.linalg.cholesky(0.5 * (M + M.T))
    except np.linalg.LinAlgError:
        return False
    return bool(np.min(np.diag(L)) ** 2 > floor)


def _al_hessian(nlp, hess, z, lam, rho, rough):
    """Starting matrix of a phase-one subproblem: ∇²L(z, λ + ρh) + ρ∇hᵀ∇h, shifted positive definite."""
    if nlp.mh:
        h, J = nlp.h(z), nlp.J(z, rough)
        H = _z_matrix(nlp, hess.at(z, lam + rho * h)) + rho * (J.T @ J)
    else:
        H = _z_matrix(nlp, hess.at(z, lam))
    H = H.toarray() if sp.issparse(H) else H
    H = 0.5 * (H + H.T)
    size = max(1.0, float(np.max(np.abs(H), initial=0.0)))
    lo = float(np.linalg.eigvalsh(H).min())
    if lo < 1e-6 * size:
        H = H + (1e-6 * size - lo) * np.eye(H.shape[0])
    return H


def _ls_multipliers(nlp, z, rough):
    """Least-squares multipliers λ of ∇f + ∇hᵀλ + Wᵀμ = 0, W the constraints of Ω active at z
    (active bounds removed by dropping their coordinates)."""
    fixed, rows = nlp.poly.active_sets(z, 1e-9)
    keep = np.ones(nlp.N, dtype=bool)
    keep[fixed] = False
    J = nlp.J(z, rough)[:, keep]
    g = nlp.g(z, rough)[keep]
    Ar = nlp.poly.A[rows]
    Ar = Ar[:, keep] if sp.issparse(Ar) else Ar[:, keep]
    if sp.issparse(Ar) or _large(nlp):
        M = sp.vstack([sp.csr_array(J), sp.csr_array(Ar)], format="csr")
        if M.shape[0] == 0:
            return np.zeros(0)
        # y = argmin ‖g + Mᵀy‖: the multipliers of min ½‖d‖² + gᵀd s.t. M d = 0 (one sparse KKT solve)
        zero = np.zeros(M.shape[0])
        res = solve_qp(sp.identity(g.size, format="csc"), g, M, zero, zero, method="sparse")
        if res.status == "optimal":
            y = res.w
        else:
            y = lsqr(M.T, -g, atol=1e-14, btol=1e-14, iter_lim=10 * (M.shape[0] + 10))[0]
    else:
        M = np.vstack([J, Ar])
        if M.shape[0] == 0:
            return np.zeros(0)
        y = np.linalg.lstsq(M.T, -g, rcond=None)[0]
    return y[: nlp.mh]


class _LagrangianHessian:
    """∇²_zz L for the multiplier steps: exact, forward differences of ∇L, or scipy's damped
    BFGS on the x-block (slacks enter L linearly), kept across phase-two visits."""

    def __init__(self, nlp, mode):
        self.nlp, self.mode, self.bfgs = nlp, mode, None

    def at(self, z, lam):
        nlp = self.nlp
        if self.mode != "bfgs":
            Hx = nlp.hess_lagrangian_x(z, lam, self.mode)
            return Hx if _large(nlp) else _z_matrix(nlp, Hx)  # large: the x-block (see _positive_definite)
        if self.bfgs is None:  # first step no longer than max(1, ‖x‖∞)
            x, gx = z[: nlp.n], nlp.F.g(z[: nlp.n], True)
            scale = max(1.0, float(np.max(np.abs(gx))) / max(1.0, float(np.max(np.abs(x)))))
            self.bfgs = DampedBFGS(scale * np.eye(nlp.n), init_scale="auto")
        return _z_matrix(nlp, self.bfgs.matrix())

    def update(self, s, y):
        """Damped BFGS update with s = Δx, y = Δ∇_x L at the new multipliers."""
        if self.mode != "bfgs":
            return
        n = self.nlp.n
        if self.bfgs is None:
            self.bfgs = DampedBFGS(np.eye(n), init_scale="auto")
        self.bfgs.update(s[:n], y[:n])

    def reset(self):
        """Forget the BFGS matrix (a step it gave was negligible); False if there is none to forget."""
        if self.mode != "bfgs" or self.bfgs is None:
            return False
        self.bfgs = None
        return True


FLIP_FLOOR = 1e-4  # smallest curvature (relative to max|H|) a flipped eigenvalue gets: keeps the QP well conditioned


def _positive_definite(nlp, H, J, mode):
    """The matrix for the step QP, returned with ρ. Small dense problems: on the null space Z of
    ∇h the reduced Hessian ZᵀHZ = VΛVᵀ gets max(|Λ|, FLIP_FLOOR·max|H|) for Λ when it is not
    positive definite — unchanged where it already is, as near a strict minimiser — then ρ∇hᵀ∇h
    is added, which leaves the solution on {∇h d = −h} unchanged (the caller corrects λ by −ρh).
    Large ones: the x-block shifted positive definite (:func:`_shift_to_positive_definite`),
    slacks with zero curvature, ρ = 0."""
    if sp.issparse(H) or _large(nlp):
        n = nlp.n
        Hx = sp.csc_array(H)[:, :n][:n] if H.shape[0] != n else H
        diag = _diagonal_of(Hx)
        if diag is not None:  # the diagonal itself (the sparse QP back end's fast path)
            if mode != "bfgs":
                size = max(1.0, float(np.max(np.abs(Hx.data), initial=0.0)))
                diag = _shift_diagonal(diag, 1e-8, size)
            return np.concatenate([diag, np.zeros(nlp.ns)]), 0.0
        if mode != "bfgs":
            Hx = _shift_to_positive_definite(sp.csc_array(Hx) if not isinstance(Hx, np.ndarray) else Hx)
        return _z_matrix(nlp, Hx), 0.0
    N = H.shape[0]
    H = 0.5 * (H + H.T)
    size = float(np.max(np.abs(H), initial=0.0))
    # floors relative to max|H| itself for BFGS (positive definite by construction; a matrix that
    # shrank along an unbounded direction must keep its long steps), to max(1, max|H|) otherwise
    size = (size if size > 0 else 1.0) if mode == "bfgs" else max(1.0, size)
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
    """The rows of the step QP — linearised h (equalities), then the linear rows of Ω — shifted
    to the step d, with the bounds of d."""
    poly = nlp.poly
    if poly.sparse or _large(nlp):
        C = _stack_rows(J, poly.A)
    else:
        C = np.vstack([J, poly.A])
    Az = poly.A @ z
    lo = np.concatenate([-h, poly.l - Az])
    hi = np.concatenate([-h, poly.u - Az])
    return C, lo, hi, poly.lb - z, poly.ub - z


def _stack_rows(J, A):
    """[J; A] as a CSR array, J dense (its nonzeros kept), A dense or sparse."""
    A = A if isinstance(A, sp.csr_array) else sp.csr_array(A)
    rows, cols = np.nonzero(J)
    indptr = np.concatenate([np.searchsorted(rows, np.arange(J.shape[0] + 1)), rows.size + A.indptr[1:]])
    return sp.csr_array(
        (np.concatenate([J[rows, cols], A.data]), np.concatenate([cols, A.indices]), indptr),
        shape=(J.shape[0] + A.shape[0], A.shape[1]),
    )


class _StepWarm:
    """Active sets of the last step QPs (guesses for the sparse back end, verified there)."""

    def __init__(self):
        self.multiplier = None
        self.constraint = None

    @staticmethod
    def guesses(nlp, last):
        """Guesses for a step QP: its last active set, then the last projection's (rows of h active)."""
        poly = nlp.poly._warm
        from_poly = None if poly is None else (np.concatenate([np.ones(nlp.mh, dtype=np.int8), poly[0]]), poly[1])
        return [last, from_poly]

    @staticmethod
    def hint(nlp, active):
        """Pass a step QP's active set on to the next projection (its rows of Ω, its bounds)."""
        nlp.poly.hint = (active[0][nlp.mh :], active[1])


def _multiplier_step(nlp, z, h, J, g, H, warm, mode):
    """SQP step d over Ω, the new λ and dᵀH'd, or Nones when the QP has no solution."""
    Hp, rho = _positive_definite(nlp, H, J, mode)
    C, lo, hi, lb, ub = _step_rows(nlp, z, h, J)
    res = solve_qp(Hp, g, C, lo, hi, lb, ub, warm=warm.guesses(nlp, warm.multiplier))
    if res.status != "optimal" and nlp.mh:
        # inconsistent linearisation (or dependent rows that round-off made so): ask only for the
        # change in h that the least-squares constraint step achieves (Byrd–Omojokun relaxation)
        target = J @ _constraint_step(nlp, z, h, J, warm)
        lo[: nlp.mh] = hi[: nlp.mh] = target
        res = solve_qp(Hp, g, C, lo, hi, lb, ub)
        h = -target
    if res.status != "optimal":
        return None, None, None
    warm.multiplier = res.active
    if res.active is not None:
        warm.hint(nlp, res.active)
    d = res.x
    return d, res.w[: nlp.mh] - rho * h, float(d @ (Hp * d if np.ndim(Hp) == 1 else Hp @ d))


def _constraint_step(nlp, z, h, J, warm):
    """Least-norm step onto {h + ∇h d = 0} ∩ (Ω − z); if that set is empty, a Levenberg–Marquardt
    step for min ‖h + ∇h d‖ inside Ω."""
    N = nlp.N
    C, lo, hi, lb, ub = _step_rows(nlp, z, h, J)
    eye = np.ones(N) if _large(nlp) else np.eye(N)  # (large: I as its diagonal)
    res = solve_qp(eye, np.zeros(N), C, lo, hi, lb, ub, warm=warm.guesses(nlp, warm.constraint))
    if res.status == "optimal":
        warm.constraint = res.active
        if res.active is not None:
            warm.hint(nlp, res.active)
        return res.x
    JJ = J.T @ J
    reg = 1e-6 * max(1.0, float(np.max(np.abs(JJ), initial=0.0)))
    mh = nlp.mh
    res = solve_qp(JJ + reg * np.eye(N), J.T @ h, C[mh:], lo[mh:], hi[mh:], lb, ub)
    if res.status != "optimal":
        raise np.linalg.LinAlgError("no constraint step")
    return res.x


def _negligible(d, z):
    return float(np.max(np.abs(d), initial=0.0)) <= 1e-12 * (1.0 + float(np.max(np.abs(z), initial=0.0)))


def _merit_search(run, z, d, new_lam, g, h, nu, curv):
    """Armijo backtracking on the ℓ1 merit φ = f + Σ νᵢ|hᵢ| (slacks at their best values, so |hᵢ| is
    the violation of cᵢ) along the Newton step d, the unit step first: a step the merit accepts
    costs one objective value. νᵢ ≥ 1.1|λ⁺ᵢ| makes d a descent direction; a weight may fall again
    (Powell's rule, as in SLSQP); and Σνᵢ|hᵢ| ≥ 2(∇fᵀd + ½dᵀHd), so that half the predicted merit
    decrease comes from feasibility (Nocedal & Wright 18.36). A NaN/inf at a trial point is a
    failed trial (the step shrinks tenfold). Returns (t, ν), t = None when the search fails."""
    nlp = run.nlp
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
    for _ in range(30):
        try:
            y = nlp.with_best_slacks(np.clip(z + t * d, nlp.poly.lb, nlp.poly.ub))
            phi = nlp.f(y) + float(nu @ np.abs(nlp.h(y)))
            if phi <= phi0 + 1e-4 * t * slope:
                return t, nu
            denom = 2.0 * (phi - phi0 - slope * t)
            tq = -slope * t * t / denom if denom > 0 else 0.5 * t
        except NonFiniteError as exc:
            run.note_nonfinite(exc)
            tq = 0.1 * t
        t = min(0.5 * t, max(0.1 * t, tq))
        if _negligible(t * d, z):
            break
    return None, nu


def _phase_two(run, z, lam, hess):
    """Balanced-reduction Newton steps from (z, λ); returns (z, λ, converged) at the last point
    accepted (the given one when no step was)."""
    nlp, opts = run.nlp, run.opts
    mh = nlp.mh
    Ec, em, scale = _errors(nlp, z, lam, run.rough)
    if mh:
        lam_ls = run.ls_multipliers(z)
        if not np.array_equal(lam_ls, lam):
            _, em2, _ = _errors(nlp, z, lam_ls, run.rough)
            if em2.upper < em.lower or (not em2.lower >= em.upper and em2.value() < em.value()):
                lam, em = lam_ls, em2
    run.remember(z, lam, Ec)
    E_best, nu = _BestError(), np.zeros(mh)
    E_best.add(Ec, em)
    warm = _StepWarm()
    for _ in range(opts.max_phase_two_steps):
        Ec, em, scale = _measured(run, z, lam, (Ec, em, scale))
        if _converged(run, Ec, em, scale):
            return z, lam, True
        try:
            step = _balanced_step(run, hess, z, lam, Ec, em, E_best, nu, warm)
        except np.linalg.LinAlgError:
            step = None  # phase two cannot go on from here: back to phase one
        if step is None:
            break
        kind, accept, znew, new_lam, (Ecn, emn, scalen), nu, gL_old = step
        run.history.append(
            {"phase": 2, "step": kind, "accept": accept, "nit": run.nit + 1, "E_c": Ecn, "E_m": emn.record()}
        )
        if accept is None:
            break
        hess.update(znew - z, nlp.grad_lagrangian(znew, new_lam, run.rough) - gL_old)
        z, lam, Ec, em, scale = znew, new_lam, Ecn, emn, scalen
        E_best.add(Ec, em)
        run.remember(z, lam, Ec)
        run.tick(z)
    if run.rough:
        return z, lam, False
    return z, lam, _converged(run, Ec, em, scale)


def _trial(run, znew, lam):
    """Errors at a trial point and f there (so that no point with a non-finite f is accepted);
    None when a value is NaN/inf (noted in the run)."""
    try:
        errs = _errors(run.nlp, znew, lam, run.rough)
        run.nlp.f(znew)
    except NonFiniteError as exc:
        run.note_nonfinite(exc)
        return None
    return errs


def _balanced_step(run, hess, z, lam, Ec, em, E_best, nu, warm):
    """One phase-two step: (kind, accepted by "estimators" | "merit" | None, z⁺, λ⁺, errors at z⁺, ν,
    ∇L(z, λ⁺)), or None when no step can be formed."""
    nlp, opts = run.nlp, run.opts
    poly, mh = nlp.poly, nlp.mh
    h, J, g = nlp.h(z), nlp.J(z, run.rough), nlp.g(z, run.rough)
    if mh and em.below(Ec, opts.theta):
        d = _constraint_step(nlp, z, h, J, warm)
        znew = _clipped_point(run, z, d)
        errs = None if znew is None else _trial(run, znew, lam)
        if errs is not None and errs[0] <= 0.5 * Ec:  # a constraint step must halve the violation
            return "constraint", "estimators", znew, lam, errs, nu, g + J.T @ lam
    d, new_lam, curv = _multiplier_step(nlp, z, h, J, g, hess.at(z, lam), warm, hess.mode)
    if d is not None and _negligible(d, z) and hess.reset():
        d, new_lam, curv = _multiplier_step(nlp, z, h, J, g, hess.at(z, lam), warm, hess.mode)
    if d is None or _negligible(d, z):
        return None
    gL_old = g + J.T @ new_lam if mh else g
    znew = _clipped_point(run, z, d)
    errs = None if znew is None else _trial(run, znew, new_lam)
    if errs is not None and E_best.accepts(errs[0], errs[1], 0.9):
        return "multiplier", "estimators", znew, new_lam, errs, nu, gL_old
    t, nu = _merit_search(run, z, d, new_lam, g, h, nu, curv)
    if t is None:
        return "multiplier", None, z, lam, (Ec, em, 1.0), nu, gL_old
    if t < 1.0 or errs is None:
        znew = nlp.with_best_slacks(np.clip(z + t * d, poly.lb, poly.ub))
        new_lam = lam + t * (new_lam - lam)
        gL_old = g + J.T @ new_lam if mh else g
        errs = _errors(nlp, znew, new_lam, run.rough)
    return "multiplier", "merit", znew, new_lam, errs, nu, gL_old


def _clipped_point(run, z, d):
    """z + d inside the bounds with the best slacks, or None if c is NaN/inf there (noted)."""
    nlp = run.nlp
    try:
        return nlp.with_best_slacks(np.clip(z + d, nlp.poly.lb, nlp.poly.ub))
    except NonFiniteError as exc:
        run.note_nonfinite(exc)
        return None
