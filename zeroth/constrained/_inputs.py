"""Check and normalise the scipy-shaped inputs of :func:`minimize` (before any work).

Every error names the argument at fault. The output is a :class:`Spec`: bounds, the stacked
linear rows and a list of :class:`NonlinearPart` (one per nonlinear constraint object).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint, NonlinearConstraint

__all__ = ["Spec", "NonlinearPart", "as_array", "check_inputs", "JAC_MODES", "HESS_MODES"]

JAC_MODES = ("2-point", "3-point", "cs", "zo")
HESS_MODES = ("bfgs", "2-point")


def as_array(value, name: str) -> np.ndarray:
    """float64 numpy copy of an array-like or torch tensor."""
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.detach().cpu().to(torch.float64).numpy()
    try:
        return np.array(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be array-like of real numbers, got {type(value).__name__}") from exc


def _side(value, m: int, default: float, name: str) -> np.ndarray:
    arr = np.full(m, default) if value is None else np.broadcast_to(as_array(value, name), (m,)).copy()
    if np.any(np.isnan(arr)):
        raise ValueError(f"{name} contains NaN")
    return arr


@dataclass
class NonlinearPart:
    """One nonlinear constraint object: cl ≤ fun(x) ≤ cu, with optional jac / hess."""

    fun: Callable
    jac: object  # callable or a JAC_MODES string
    hess: Optional[Callable]  # hess(x, v) -> (n, n) or None
    cl: Optional[np.ndarray]  # filled once the output size is known
    cu: Optional[np.ndarray]
    args: tuple = ()
    label: str = ""
    raw_bounds: tuple = field(default=(None, None))


@dataclass
class Spec:
    """Normalised problem data in the user's variables x (length n)."""

    n: int
    lb: np.ndarray
    ub: np.ndarray
    A: object  # (m, n) dense ndarray or scipy sparse csr_array
    al: np.ndarray
    au: np.ndarray
    nonlinear: list


def check_x0(x0) -> np.ndarray:
    x = as_array(x0, "x0")
    if x.ndim > 1:
        raise ValueError(f"x0 must be 1-D, got shape {x.shape}")
    x = np.atleast_1d(x)
    if x.size == 0:
        raise ValueError("x0 must not be empty")
    if not np.all(np.isfinite(x)):
        raise ValueError("x0 contains NaN or inf")
    return x


def check_bounds(bounds, n: int):
    """(lb, ub) from None, scipy Bounds or a sequence of (min, max) pairs."""
    if bounds is None:
        return np.full(n, -np.inf), np.full(n, np.inf)
    if isinstance(bounds, Bounds):
        lb = np.broadcast_to(as_array(bounds.lb, "bounds.lb"), (n,)).copy() if np.size(bounds.lb) in (1, n) else None
        ub = np.broadcast_to(as_array(bounds.ub, "bounds.ub"), (n,)).copy() if np.size(bounds.ub) in (1, n) else None
        if lb is None or ub is None:
            raise ValueError(
                f"bounds must have length {n} (the size of x0), got lb size {np.size(bounds.lb)}, "
                f"ub size {np.size(bounds.ub)}"
            )
    else:
        try:
            pairs = list(bounds)
        except TypeError as exc:
            raise TypeError("bounds must be None, scipy.optimize.Bounds or a sequence of (min, max) pairs") from exc
        if len(pairs) != n:
            raise ValueError(f"bounds must have length {n} (the size of x0), got {len(pairs)}")
        lb, ub = np.empty(n), np.empty(n)
        for i, pair in enumerate(pairs):
            try:
                lo, hi = pair
            except (TypeError, ValueError) as exc:
                raise ValueError(f"bounds[{i}] must be a (min, max) pair, got {pair!r}") from exc
            lb[i] = -np.inf if lo is None else float(lo)
            ub[i] = np.inf if hi is None else float(hi)
    if np.any(np.isnan(lb)) or np.any(np.isnan(ub)):
        raise ValueError("bounds contain NaN")
    bad = np.flatnonzero(lb > ub)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"bounds are infeasible: lb[{i}] = {lb[i]} > ub[{i}] = {ub[i]}")
    return lb, ub


def _check_jac_like(jac, name: str):
    if callable(jac):
        return jac
    if jac is None or jac is False:
        return "2-point"
    if isinstance(jac, str):
        key = jac.lower()
        if key in JAC_MODES:
            return key
    raise ValueError(f"{name} must be a callable or one of {JAC_MODES}, got {jac!r}")


def check_constraints(constraints, n: int):
    """Linear rows (A, l, u) and a list of NonlinearPart from the scipy forms."""
    if constraints is None:
        constraints = ()
    if isinstance(constraints, (dict, LinearConstraint, NonlinearConstraint)):
        constraints = (constraints,)
    try:
        items = list(constraints)
    except TypeError as exc:
        raise TypeError(
            "constraints must be a dict, LinearConstraint, NonlinearConstraint or a sequence of them, "
            f"got {type(constraints).__name__}"
        ) from exc
    rows, lows, ups, parts = [], [], [], []
    for k, con in enumerate(items):
        where = f"constraints[{k}]"
        if isinstance(con, LinearConstraint):
            A = sp.csr_array(con.A, dtype=float) if sp.issparse(con.A) else np.atleast_2d(as_array(con.A, where + ".A"))
            if A.ndim != 2 or A.shape[1] != n:
                raise ValueError(f"{where}.A must have {n} columns (the size of x0), got shape {A.shape}")
            m = A.shape[0]
            lo, up = _side(con.lb, m, -np.inf, where + ".lb"), _side(con.ub, m, np.inf, where + ".ub")
            if np.any(lo > up):
                raise ValueError(f"{where} is infeasible: lb > ub in some row")
            rows.append(A)
            lows.append(lo)
            ups.append(up)
        elif isinstance(con, NonlinearConstraint):
            if not callable(con.fun):
                raise TypeError(f"{where}.fun must be callable")
            jac = _check_jac_like(con.jac, where + ".jac")
            hess = con.hess if callable(con.hess) else None
            parts.append(NonlinearPart(con.fun, jac, hess, None, None, (), where, (con.lb, con.ub)))
        elif isinstance(con, dict):
            unknown = set(con) - {"type", "fun", "jac", "args"}
            if unknown:
                raise ValueError(f"{where} has unknown keys {sorted(unknown)} (allowed: type, fun, jac, args)")
            ctype = con.get("type")
            if not isinstance(ctype, str) or ctype.lower() not in ("eq", "ineq"):
                raise ValueError(f"{where}['type'] must be 'eq' or 'ineq', got {ctype!r}")
            if not callable(con.get("fun")):
                raise TypeError(f"{where}['fun'] must be callable")
            jac = _check_jac_like(con.get("jac"), where + "['jac']")
            args = con.get("args", ())
            args = args if isinstance(args, tuple) else (args,)
            ub = 0.0 if ctype.lower() == "eq" else np.inf
            parts.append(NonlinearPart(con["fun"], jac, None, None, None, args, where, (0.0, ub)))
        else:
            raise TypeError(
                f"{where} must be a dict, LinearConstraint or NonlinearConstraint, got {type(con).__name__}"
            )
    if any(sp.issparse(A) for A in rows):
        A = sp.vstack([sp.csr_array(A) for A in rows], format="csr")
    else:
        A = np.vstack(rows) if rows else np.zeros((0, n))
    al = np.concatenate(lows) if lows else np.zeros(0)
    au = np.concatenate(ups) if ups else np.zeros(0)
    return A, al, au, parts


def check_inputs(x0, bounds, constraints):
    """x0 as float64 and the normalised :class:`Spec`."""
    x = check_x0(x0)
    lb, ub = check_bounds(bounds, x.size)
    A, al, au, parts = check_constraints(constraints, x.size)
    return x, Spec(x.size, lb, ub, A, al, au, parts)


def check_tol(tol):
    if tol is None:
        return None
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not math.isfinite(tol) or tol <= 0:
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
    return float(tol)
