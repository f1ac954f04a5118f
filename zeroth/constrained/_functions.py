"""Counted, cached evaluation of the objective, its gradient, the nonlinear constraints and
their Jacobians, in float64 numpy — whatever the user's functions take and return.

* ``jac`` callable → exact; ``"2-point"``/``"3-point"`` → finite differences that step
  inwards near a bound; ``"zo"`` → zeroth's estimators through
  :func:`zeroth.estimators.zo_gradient` / :func:`zo_jacobian` (default: CGE, below).
* Every function value passes a finiteness check (:class:`NonFiniteError`) and the objective
  budget check (:class:`BudgetError`), so failures surface with context, not deep inside.
  ``nfev`` counts every call of ``fun`` (line searches, differences, ZO estimates alike),
  ``njev`` the gradients (calls of ``jac``, or estimates), ``ncev``/``ncjev`` the same for
  the constraints. Values are cached at the last few points, so no point is paid for twice.
* If ``x0`` was a torch tensor, the user's functions receive tensors of its dtype/device.

Default ZO estimate (choice): CGE on coordinates scaled by dⱼ = max(1, |xⱼ|) (zeroth's CGE has
one μ per tensor, so it runs on u ↦ f(x + D u) and ∇f = D⁻¹∇ᵤ). *Precise*: central
differences, μ = ε^{1/3} ≈ 6e-6 — balances the O(μ²) truncation and O(ε/μ) rounding
errors, gradients to ~1e-10 relative, 2n values. *Rough*: forward differences, μ = √ε,
stepping inwards at a bound, f(x) reused from the cache — ~1e-8 relative, n values (n + 1
if f(x) is new). The solver sets :attr:`Functions.rough_ok` while it is far from a solution
(its error estimates are far above that accuracy) and clears it before any convergence test;
a gradient cached as rough is recomputed when a precise one is asked for. ``"3-point"``
differences have the same rough variant (``"2-point"`` ones). A user-given ``zo_estimator``
is used as given, always.
"""
from __future__ import annotations

import numpy as np

from ._inputs import as_array

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

__all__ = ["Functions", "NonFiniteError", "BudgetError"]

EPS = np.finfo(float).eps


class NonFiniteError(Exception):
    """A user function returned NaN/inf (``which`` is 'fun', 'jac', 'constraints' or 'constraint jac')."""

    def __init__(self, which: str, x):
        super().__init__(f"{which} returned a non-finite value")
        self.which, self.x = which, np.array(x)


class BudgetError(Exception):
    """The objective-evaluation budget (``maxfev``) is spent."""


class _Cache:
    """The values at the last ``size`` points, keyed by the bytes of x (so an accepted trial
    point, or a point revisited by a line search, is never evaluated twice)."""

    def __init__(self, size=8):
        self.size, self.items = size, {}

    def get(self, x):
        return self.items.get(x.tobytes())

    def put(self, x, value):
        key = x.tobytes()
        self.items.pop(key, None)
        self.items[key] = value
        if len(self.items) > self.size:
            del self.items[next(iter(self.items))]
        return value


class Functions:
    """The problem's functions in x-space (length n), counted and cached."""

    def __init__(self, fun, args, jac, hess, spec, like, maxfev, zo_estimator=None, zo_generator=None):
        self._fun, self._args = fun, args
        self._jac, self._hess = jac, hess
        self.spec, self.parts = spec, spec.nonlinear
        self.n = spec.n
        self._like = like  # the user's x0 (array or tensor) whose type the user's functions receive
        self.maxfev = maxfev
        self.zo_estimator, self.zo_generator = zo_estimator, zo_generator
        self.nfev = self.njev = self.nhev = self.ncev = self.ncjev = 0
        self._fc, self._gc, self._cc, self._jc = _Cache(), _Cache(), _Cache(), _Cache()  # g, J: (value, rough)
        self.rough_ok = False  # set by the solver: one-sided differences are accurate enough for now
        self.eps = EPS
        if torch is not None and isinstance(like, torch.Tensor) and like.is_floating_point():
            self.eps = max(EPS, float(torch.finfo(like.dtype).eps))  # differences sized for the user's dtype
        self.m = 0
        self.cl = np.zeros(0)
        self.cu = np.zeros(0)

    # --- conversion -------------------------------------------------------------------
    def to_user(self, x):
        if torch is not None and isinstance(self._like, torch.Tensor):
            return torch.as_tensor(x, dtype=self._like.dtype, device=self._like.device).clone()
        return np.array(x, dtype=float)

    # --- objective ----------------------------------------------------------------------
    def _raw_f(self, x):
        if self.nfev >= self.maxfev:
            raise BudgetError()
        self.nfev += 1
        out = self._fun(self.to_user(x), *self._args)
        if self._jac is True:
            out, g = out
            self._gc.put(x, (self._grad_out(g, x), False))
        try:
            val = float(as_array(out, "fun output").reshape(()))
        except ValueError as exc:
            raise ValueError(f"fun must return a scalar, got shape {np.shape(as_array(out, 'fun output'))}") from exc
        if not np.isfinite(val):
            raise NonFiniteError("fun", x)
        return val

    def f(self, x):
        hit = self._fc.get(x)
        return hit if hit is not None else self._fc.put(x, self._raw_f(x))

    def _grad_out(self, g, x):
        g = as_array(g, "jac output").reshape(-1)
        if g.size != self.n:
            raise ValueError(f"jac must return an array of shape ({self.n},), got size {g.size}")
        if not np.all(np.isfinite(g)):
            raise NonFiniteError("jac", x)
        return g

    def g(self, x):
        hit = self._gc.get(x)
        if hit is not None and (self.rough_ok or not hit[1]):
            return hit[0]
        self.njev += 1
        if self._jac is True:
            self._fc.put(x, self._raw_f(x))
            return self._gc.get(x)[0]
        rough = self.rough_ok and self._has_rough(self._jac)
        if callable(self._jac):
            g = self._grad_out(self._jac(self.to_user(x), *self._args), x)
        elif self._jac == "zo":
            g = self._zo(self._raw_f, self.f, x, rough, vector=False)
        else:
            g = self._fd(lambda y: np.array([self._raw_f(y)]), x, self._jac, self.f(x), rough)[0]
        if not np.all(np.isfinite(g)):
            raise NonFiniteError("jac", x)
        self._gc.put(x, (g, rough))
        return g

    def hess_f(self, x):
        """Exact Hessian of f if the user gave one, else None."""
        if not callable(self._hess):
            return None
        self.nhev += 1
        H = as_array(self._hess(self.to_user(x), *self._args), "hess output")
        if H.shape != (self.n, self.n):
            raise ValueError(f"hess must return an array of shape ({self.n}, {self.n}), got {H.shape}")
        return H

    # --- constraints --------------------------------------------------------------------
    def _raw_part(self, part, x):
        out = as_array(part.fun(self.to_user(x), *part.args), f"{part.label} fun output")
        return np.atleast_1d(out).reshape(-1)

    def _raw_c(self, x):
        """All nonlinear constraint values at x, one call per part (counted once)."""
        self.ncev += 1
        values = [self._raw_part(part, x) for part in self.parts]
        c = np.concatenate(values) if values else np.zeros(0)
        if not np.all(np.isfinite(c)):
            raise NonFiniteError("constraints", x)
        return values, c

    def setup_constraints(self, x):
        """Evaluate the nonlinear constraints once at x0 to learn their sizes; fill cl, cu."""
        values, c = self._raw_c(x)
        cls, cus = [], []
        for part, v in zip(self.parts, values):
            lo, up = part.raw_bounds
            try:
                lo = np.broadcast_to(as_array(-np.inf if lo is None else lo, part.label + ".lb"), v.shape).copy()
                up = np.broadcast_to(as_array(np.inf if up is None else up, part.label + ".ub"), v.shape).copy()
            except ValueError as exc:
                raise ValueError(f"{part.label}: lb/ub do not match the {v.size} values its fun returns") from exc
            if np.any(lo > up):
                raise ValueError(f"{part.label} is infeasible: lb > ub in some component")
            part.cl, part.cu, part.size = lo, up, v.size
            cls.append(lo), cus.append(up)
        self.m = c.size
        self.cl = np.concatenate(cls) if cls else np.zeros(0)
        self.cu = np.concatenate(cus) if cus else np.zeros(0)
        return self._cc.put(x, c)

    def c(self, x):
        hit = self._cc.get(x)
        if hit is not None:
            return hit
        if not self.parts:
            return np.zeros(0)
        values, c = self._raw_c(x)
        for part, v in zip(self.parts, values):
            if v.size != part.size:
                raise ValueError(f"{part.label} fun returned {v.size} values, expected {part.size}")
        return self._cc.put(x, c)

    def J(self, x):
        hit = self._jc.get(x)
        if hit is not None and (self.rough_ok or not hit[1]):
            return hit[0]
        if not self.parts:
            return np.zeros((0, self.n))
        self.ncjev += 1
        blocks, rough_any = [], False
        for part in self.parts:
            if callable(part.jac):
                Jp = np.atleast_2d(as_array(part.jac(self.to_user(x), *part.args), f"{part.label} jac output"))
                if Jp.shape != (part.size, self.n):
                    raise ValueError(f"{part.label} jac must return shape ({part.size}, {self.n}), got {Jp.shape}")
            else:
                call = lambda y, part=part: self._counted_part(part, y)
                mode = "zo" if self._jac == "zo" else part.jac
                rough = self.rough_ok and self._has_rough(mode)
                rough_any |= rough
                if mode == "zo":
                    Jp = self._zo(call, lambda y, part=part: self._part_value(part, y), x, rough, vector=True)
                else:
                    Jp = self._fd(call, x, mode, self._part_value(part, x), rough)
            blocks.append(Jp)
        Jm = np.vstack(blocks)
        if not np.all(np.isfinite(Jm)):
            raise NonFiniteError("constraint jac", x)
        self._jc.put(x, (Jm, rough_any))
        return Jm

    def _counted_part(self, part, y):
        self.ncev += 1
        v = self._raw_part(part, y)
        if not np.all(np.isfinite(v)):
            raise NonFiniteError("constraints", y)
        return v

    def _part_value(self, part, x):
        start = 0
        for p in self.parts:
            if p is part:
                return self.c(x)[start:start + p.size]
            start += p.size
        raise AssertionError("unknown constraint part")  # pragma: no cover

    def hess_c(self, x, v):
        """Σ v_i ∇²c_i(x) if every nonlinear constraint has a Hessian, else None."""
        H = np.zeros((self.n, self.n))
        start = 0
        for part in self.parts:
            vp = v[start:start + part.size]
            start += part.size
            if not np.any(vp):
                continue
            if part.hess is None:
                return None
            H += as_array(part.hess(self.to_user(x), self.to_user(vp)), f"{part.label} hess output")
        return H

    def has_exact_hessian(self):
        return callable(self._hess) and all(p.hess is not None for p in self.parts)

    # --- derivative approximations --------------------------------------------------------
    def _has_rough(self, mode):
        """Whether ``mode`` has a cheaper one-sided variant (see the module notes)."""
        return mode == "3-point" or (mode == "zo" and self.zo_estimator is None)

    def _fd(self, call, x, mode, f0, rough=False):
        """Finite-difference Jacobian of a vector function (rows = outputs), stepping inside bounds."""
        f0 = np.atleast_1d(f0)
        lb, ub = self.spec.lb, self.spec.ub
        Jt = np.empty((self.n, f0.size))
        for j in range(self.n):
            scale = max(1.0, abs(x[j]))
            if mode == "3-point" and not rough:
                h = self.eps ** (1 / 3) * scale
                if x[j] - h >= lb[j] and x[j] + h <= ub[j]:
                    xp, xm = x.copy(), x.copy()
                    xp[j] += h
                    xm[j] -= h
                    Jt[j] = (call(xp) - call(xm)) / (2 * h)
                    continue
            h = np.sqrt(self.eps) * scale
            if x[j] + h > ub[j] and x[j] - h >= lb[j]:
                h = -h
            xp = x.copy()
            xp[j] += h
            Jt[j] = (call(xp) - f0) / (xp[j] - x[j])
        return Jt.T

    def _zo(self, raw, cached, x, rough, vector):
        """zeroth's ZO estimate of the gradient (scalar ``raw``) or Jacobian (vector ``raw``) at x;
        ``cached`` gives the value at x itself (a forward scheme's base point) from the cache."""
        from zeroth.estimators import CGE, zo_gradient, zo_jacobian

        est, d = self.zo_estimator, np.ones(self.n)
        if est is None:
            d = np.maximum(1.0, np.abs(x))
            if rough:
                mu = float(np.sqrt(self.eps))
                lb, ub = self.spec.lb, self.spec.ub
                d[(x + mu * d > ub) & (x - mu * d >= lb)] *= -1.0  # step inwards at an upper bound
                est = CGE(mu=mu, scheme="forward")
            else:
                est = CGE(mu=float(self.eps ** (1 / 3)), scheme="central")

        def call(u):
            u = u.detach().cpu().numpy().astype(float)
            y = cached(x) if not np.any(u) else raw(x + d * u)
            return torch.as_tensor(y, dtype=torch.float64)

        u0 = torch.zeros(self.n, dtype=torch.float64)
        if vector:
            _, Ju, _ = zo_jacobian(call, u0, est, generator=self.zo_generator)
            return Ju.detach().cpu().numpy().astype(float).reshape(-1, self.n) / d
        _, gu, _ = zo_gradient(call, u0, est, generator=self.zo_generator)
        return gu.detach().cpu().numpy().astype(float).reshape(-1) / d
