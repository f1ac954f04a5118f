"""Counted, cached evaluation of the objective, its gradient, the nonlinear constraints and
their Jacobians, in float64 numpy — whatever the user's functions take and return.

* ``jac`` callable → exact; ``"2-point"``/``"3-point"``/``"cs"`` → scipy's
  :func:`scipy.optimize._numdiff.approx_derivative` (the finite differences of
  ``scipy.optimize.minimize``, steps of its size ``EPS^{1/2}·max(1, |x|)`` resp.
  ``EPS^{1/3}·max(1, |x|)`` but forward for x < 0 too, turned inwards or made one-sided at a
  bound by scipy's rule); ``"zo"`` → zeroth's estimators through
  :func:`zeroth.estimators.zo_gradient` / :func:`zo_jacobian` (default: CGE, below).
* **Never outside the bounds, never a fixed variable moved.** Every derivative approximation
  runs on the *free* variables only (``lb < ub``; a fixed variable's derivative is reported as 0,
  its bound multiplier absorbs the true value) and every point it evaluates lies within the
  bounds: finite differences step inwards (scipy's rule), the default ZO estimate uses central
  differences where ``x ± μ`` fits and, where it does not, forward differences pointing inwards
  (combined as Richardson's 2·D(h) − D(2h), second order like the central ones),
  and a user-given ``zo_estimator`` runs around a centre pulled inside the bounds by its μ, each
  query point projected onto the bounds (a random direction longer than one unit).
* Every function value passes a finiteness check (:class:`NonFiniteError`) and the objective
  budget check (:class:`BudgetError`). ``nfev`` counts every call of ``fun`` (line searches,
  differences, ZO estimates alike), ``njev`` the gradients (calls of ``jac``, or estimates),
  ``ncev``/``ncjev`` the same for the constraints. Values are cached at the last few points.
* Sparse outputs (scipy sparse arrays/matrices) of a constraint ``jac`` or of ``hess`` are
  accepted, as in scipy.
* If ``x0`` was a torch tensor, the user's functions receive tensors of its dtype/device.

Precision is an explicit argument: ``g(x, rough=True)`` / ``J(x, rough=True)`` allow the cheaper
one-sided variant (``"3-point"`` → ``"2-point"``, default ZO central → forward, μ = √ε); a
gradient cached as rough is recomputed when a precise one is asked for. The default ZO estimate
runs CGE on coordinates scaled by dⱼ = max(1, |xⱼ|) (zeroth's CGE has one μ per tensor, so it
runs on u ↦ f(x + D u), ∇f = D⁻¹∇ᵤ): precise μ = ε^{1/3} (central), rough μ = √ε (forward).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize._numdiff import approx_derivative

from ._inputs import as_array

__all__ = ["Functions", "NonFiniteError", "BudgetError"]

EPS = np.finfo(float).eps


class NonFiniteError(Exception):
    """A user function returned NaN/inf (``which`` is 'fun', 'jac', 'constraints' or 'constraint jac')."""

    def __init__(self, which: str, x):
        super().__init__(f"{which} returned a non-finite value")
        self.which, self.x = which, np.array(x)

    @property
    def status(self):
        return 3 if self.which in ("fun", "jac") else 4


class BudgetError(Exception):
    """The objective-evaluation budget (``maxfev``) is spent."""


class _Cache:
    """The values at the last ``size`` points, keyed by the bytes of x."""

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


def dense(value, name):
    """float64 dense array from an array-like, a torch tensor or a scipy sparse array/matrix."""
    if sp.issparse(value):
        return value.toarray().astype(float, copy=False)
    return as_array(value, name)


class Functions:
    """The problem's functions in x-space (length n), counted and cached."""

    def __init__(self, fun, args, jac, hess, spec, like, maxfev, zo_estimator=None, zo_generator=None):
        self._fun, self._args = fun, args
        self._jac, self._hess = jac, hess
        self.spec, self.parts = spec, spec.nonlinear
        self.n = spec.n
        self.free = spec.lb < spec.ub
        self._like = like  # the user's x0 (array or tensor) whose type the user's functions receive
        self.maxfev = maxfev
        self.zo_estimator, self.zo_generator = zo_estimator, zo_generator
        self.nfev = self.njev = self.nhev = self.ncev = self.ncjev = 0
        self._fc, self._gc, self._cc, self._jc = _Cache(), _Cache(), _Cache(), _Cache()  # g, J: (value, rough)
        self.eps: float = EPS  # np.float64, or the user's dtype's eps below
        if torch is not None and isinstance(like, torch.Tensor) and like.is_floating_point():
            self.eps = max(EPS, float(torch.finfo(like.dtype).eps))  # differences sized for the user's dtype
        self.m = 0
        self.cl = np.zeros(0)
        self.cu = np.zeros(0)

    # --- conversion -------------------------------------------------------------------
    def to_user(self, x):
        if torch is not None and isinstance(self._like, torch.Tensor):
            return torch.as_tensor(x, dtype=self._like.dtype, device=self._like.device).clone()
        if np.iscomplexobj(x):
            return np.array(x, dtype=complex)
        return np.array(x, dtype=float)

    def _outside(self, x):
        """Whether x lies outside the bounds (a bug if it ever happens: never evaluated)."""
        return bool(np.any(x < self.spec.lb) or np.any(x > self.spec.ub))

    # --- objective ----------------------------------------------------------------------
    def _raw_f(self, x):
        if self.nfev >= self.maxfev:
            raise BudgetError()
        if self._outside(np.real(x)):
            raise AssertionError("internal error: objective requested outside the bounds")  # pragma: no cover
        self.nfev += 1
        out = self._fun(self.to_user(x), *self._args)
        if self._jac is True:
            out, g = out
            if not np.iscomplexobj(x):
                self._gc.put(x, (self._grad_out(g, x), False))
        if np.iscomplexobj(x):
            cval = np.asarray(out, dtype=complex).reshape(())
            if not np.isfinite(cval):
                raise NonFiniteError("fun", np.real(x))
            return complex(cval)
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
        g = dense(g, "jac output").reshape(-1)
        if g.size != self.n:
            raise ValueError(f"jac must return an array of shape ({self.n},), got size {g.size}")
        if not np.all(np.isfinite(g)):
            raise NonFiniteError("jac", x)
        return g

    def g(self, x, rough=False):
        """∇f(x); ``rough=True`` allows the one-sided variant of an approximation."""
        hit = self._gc.get(x)
        if hit is not None and (rough or not hit[1]):
            return hit[0]
        self.njev += 1
        if self._jac is True:
            self._fc.put(x, self._raw_f(x))
            return self._gc.get(x)[0]
        if callable(self._jac):
            g = self._grad_out(self._jac(self.to_user(x), *self._args), x)
            rough = False
        else:
            mode = self._jac
            rough = rough and self._has_rough(mode)
            if mode == "zo":
                g = self._zo(self._raw_f, self.f, x, rough, vector=False)[0]
            else:
                g = self._fd(lambda y: self._raw_f(y), x, mode, self.f(x), rough, scalar=True)[0]
            if not np.all(np.isfinite(g)):
                raise NonFiniteError("jac", x)
        self._gc.put(x, (g, rough))
        return g

    def hess_f(self, x):
        """Exact Hessian of f if the user gave one (dense or scipy sparse), else None."""
        if not callable(self._hess):
            return None
        self.nhev += 1
        H = self._hess(self.to_user(x), *self._args)
        if not sp.issparse(H):
            H = as_array(H, "hess output")
        if H.shape != (self.n, self.n):
            raise ValueError(f"hess must return an array of shape ({self.n}, {self.n}), got {H.shape}")
        values = H.data if sp.issparse(H) else H
        if not np.all(np.isfinite(values)):
            raise NonFiniteError("fun", x)
        return H

    # --- constraints --------------------------------------------------------------------
    def _raw_part(self, part, x):
        out = part.fun(self.to_user(x), *part.args)
        if np.iscomplexobj(x):
            return np.atleast_1d(np.asarray(out, dtype=complex)).reshape(-1)
        return np.atleast_1d(as_array(out, f"{part.label} fun output")).reshape(-1)

    def _raw_c(self, x):
        """All nonlinear constraint values at x, one call per part (counted once)."""
        if self._outside(x):
            raise AssertionError("internal error: constraints requested outside the bounds")  # pragma: no cover
        self.ncev += 1
        values = [self._raw_part(part, x) for part in self.parts]
        c = np.concatenate(values) if values else np.zeros(0)
        if not np.all(np.isfinite(c)):
            raise NonFiniteError("constraints", x)
        return values, c

    def setup_constraints(self, x):
        """Evaluate the nonlinear constraints once at x (inside the bounds) to learn their sizes;
        fill cl, cu. Raises ValueError for mismatching lb/ub, NonFiniteError for NaN values."""
        self.ncev += 1
        values = [self._raw_part(part, x) for part in self.parts]
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
            cls.append(lo)
            cus.append(up)
        self.m = sum(v.size for v in values)
        self.cl = np.concatenate(cls) if cls else np.zeros(0)
        self.cu = np.concatenate(cus) if cus else np.zeros(0)
        c = np.concatenate(values) if values else np.zeros(0)
        if not np.all(np.isfinite(c)):
            raise NonFiniteError("constraints", x)
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

    def J(self, x, rough=False):
        """Jacobian of c at x, (m, n) dense; ``rough=True`` allows one-sided approximations."""
        hit = self._jc.get(x)
        if hit is not None and (rough or not hit[1]):
            return hit[0]
        if not self.parts:
            return np.zeros((0, self.n))
        self.ncjev += 1
        blocks, rough_any = [], False
        for part in self.parts:
            if callable(part.jac):
                Jp = np.atleast_2d(dense(part.jac(self.to_user(x), *part.args), f"{part.label} jac output"))
                if Jp.shape != (part.size, self.n):
                    raise ValueError(f"{part.label} jac must return shape ({part.size}, {self.n}), got {Jp.shape}")
            else:
                call = lambda y, part=part: self._counted_part(part, y)
                mode = "zo" if self._jac == "zo" else part.jac
                part_rough = rough and self._has_rough(mode)
                rough_any |= part_rough
                if mode == "zo":
                    Jp = self._zo(call, lambda y, part=part: self._part_value(part, y), x, part_rough, vector=True)
                else:
                    Jp = self._fd(call, x, mode, self._part_value(part, x), part_rough, scalar=False)
            blocks.append(Jp)
        Jm = np.vstack(blocks)
        if not np.all(np.isfinite(Jm)):
            raise NonFiniteError("constraint jac", x)
        self._jc.put(x, (Jm, rough_any))
        return Jm

    def _counted_part(self, part, y):
        if self._outside(np.real(y)):
            raise AssertionError("internal error: constraint requested outside the bounds")  # pragma: no cover
        self.ncev += 1
        v = self._raw_part(part, y)
        if not np.all(np.isfinite(v)):
            raise NonFiniteError("constraints", np.real(y))
        return v

    def _part_value(self, part, x):
        start = 0
        for p in self.parts:
            if p is part:
                return self.c(x)[start : start + p.size]
            start += p.size
        raise AssertionError("unknown constraint part")  # pragma: no cover

    def hess_c(self, x, v):
        """Σ v_i ∇²c_i(x) (dense or sparse) if every nonlinear constraint has a Hessian, else None."""
        H = None
        start = 0
        for part in self.parts:
            vp = v[start : start + part.size]
            start += part.size
            if not np.any(vp):
                continue
            if part.hess is None:
                return None
            Hp = part.hess(self.to_user(x), self.to_user(vp))
            Hp = Hp if sp.issparse(Hp) else as_array(Hp, f"{part.label} hess output")
            H = Hp if H is None else H + Hp
        if H is None:
            return sp.csr_array((self.n, self.n))
        return H

    def has_exact_hessian(self):
        return callable(self._hess) and all(p.hess is not None for p in self.parts)

    # --- derivative approximations --------------------------------------------------------
    def _has_rough(self, mode):
        """Whether ``mode`` has a cheaper one-sided variant (see the module notes)."""
        return mode == "3-point" or (mode == "zo" and self.zo_estimator is None)

    def has_rough_variant(self):
        """Whether ``rough=True`` can change a gradient or Jacobian (some derivative is
        approximated by a method with a one-sided variant); False for exact derivatives."""
        if not callable(self._jac) and self._jac is not True and self._has_rough(self._jac):
            return True
        return any(not callable(p.jac) and self._has_rough("zo" if self._jac == "zo" else p.jac) for p in self.parts)

    def _fd(self, call, x, mode, f0, rough, scalar):
        """Finite-difference Jacobian (rows = outputs) by scipy's approx_derivative on the free
        variables, steps kept within the bounds; fixed variables get a zero column."""
        free = np.flatnonzero(self.free)
        f0 = np.atleast_1d(f0)
        out = np.zeros((f0.size, self.n))
        if free.size == 0:
            return out
        method = "2-point" if (rough and mode == "3-point") else mode

        def sub(u):
            y = x.astype(complex) if np.iscomplexobj(u) else x.copy()
            y[free] = u
            return np.atleast_1d(call(y))

        bounds = (-np.inf, np.inf) if method == "cs" else (self.spec.lb[free], self.spec.ub[free])
        # steps of scipy's size, but always forward (scipy turns them backward for x < 0, which makes
        # the difference gradient jump by 2h at 0 and never vanish there); inwards at a bound
        rel = self.eps ** (1 / 3) if method == "3-point" else self.eps**0.5
        step = None if method == "cs" else rel * np.maximum(1.0, np.abs(x[free]))
        Jf = approx_derivative(sub, x[free], method=method, abs_step=step, f0=f0, bounds=bounds)
        out[:, free] = np.reshape(Jf, (f0.size, free.size))
        return out

    def _zo(self, raw, cached, x, rough, vector):
        """zeroth's ZO estimate of the gradient (scalar ``raw``) or Jacobian (vector ``raw``) at x,
        on the free variables, every query inside the bounds; ``cached`` gives the value at x."""
        from zeroth.estimators import CGE, zo_gradient, zo_jacobian

        lb, ub = self.spec.lb, self.spec.ub
        free = np.flatnonzero(self.free)
        rows = np.atleast_1d(cached(x)).size if vector else 1
        out = np.zeros((rows, self.n))
        if free.size == 0:
            return out
        if self.zo_estimator is not None:
            est = self.zo_estimator
            mu = float(getattr(est, "mu", 0.0) or 0.0)
            center = x.copy()
            lo_c, hi_c = lb[free] + mu, ub[free] - mu
            narrow = lo_c > hi_c  # a box narrower than 2μ (both bounds finite): its midpoint
            inner = np.clip(x[free], np.where(narrow, -np.inf, lo_c), np.where(narrow, np.inf, hi_c))
            inner[narrow] = 0.5 * (lb[free][narrow] + ub[free][narrow])
            center[free] = inner
            groups = [(free, np.ones(free.size), est, center, True, 1.0)]
        else:
            scale = np.maximum(1.0, np.abs(x[free]))
            mu_c, mu_f = float(self.eps ** (1 / 3)), float(np.sqrt(self.eps))
            room_up, room_dn = ub[free] - x[free], x[free] - lb[free]
            central = np.full(free.size, not rough) & (room_up >= mu_c * scale) & (room_dn >= mu_c * scale)
            groups = []
            if central.any():
                groups.append((free[central], scale[central], CGE(mu=mu_c, scheme="central"), x, False, 1.0))
            one = ~central
            if one.any():
                # forward differences towards the side with more room, never past a bound; precise:
                # Richardson's 2·D(h) − D(2h) (second order, as a central difference), rough: D(√ε)
                up_side = room_up[one] >= room_dn[one]
                room = np.where(up_side, room_up[one], room_dn[one])
                sign = np.where(up_side, 1.0, -1.0)
                if rough:
                    step = np.minimum(mu_f * scale[one], room)
                    groups.append((free[one], sign * step / mu_f, CGE(mu=mu_f, scheme="forward"), x, False, 1.0))
                else:
                    step = np.minimum(mu_c * scale[one], 0.5 * room)
                    fwd = CGE(mu=mu_c, scheme="forward")
                    groups.append((free[one], sign * step / mu_c, fwd, x, False, 2.0))
                    groups.append((free[one], 2.0 * sign * step / mu_c, fwd, x, False, -1.0))
        for idx, d, est, center, clip, weight in groups:

            def call(u, idx=idx, d=d, center=center, clip=clip):
                u = u.detach().cpu().numpy().astype(float)
                if not np.any(u) and center is x:
                    y = cached(x)
                else:
                    point = center.copy()
                    point[idx] = center[idx] + d * u
                    if clip:
                        point = np.clip(point, lb, ub)
                    y = raw(point)
                return torch.as_tensor(np.asarray(y, dtype=float), dtype=torch.float64)

            u0 = torch.zeros(idx.size, dtype=torch.float64)
            if vector:
                _, Ju, _ = zo_jacobian(call, u0, est, generator=self.zo_generator)
                out[:, idx] += weight * Ju.detach().cpu().numpy().astype(float).reshape(rows, idx.size) / d
            else:
                _, gu, _ = zo_gradient(call, u0, est, generator=self.zo_generator)
                out[0, idx] += weight * gu.detach().cpu().numpy().astype(float).reshape(-1) / d
        return out
