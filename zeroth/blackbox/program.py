"""Programs: what a :class:`~zeroth.blackbox.BlackBox` calls, with conversion and failure handling.

A :class:`Program` turns one call ``program(x, *context)`` into a float tensor. It says how
it wants to be called (``batched``/``max_points``) and what a failure means (``on_failure``);
the :class:`~zeroth.blackbox.BlackBox` does the scheduling, counting and the gradient side
of the failure policy. A new back end (a worker pool, a remote service) is one subclass
implementing :meth:`Program.run`.

Calling convention (what ``x`` is):

* ``batched=False`` — ``x`` is exactly what the black box's forward received (all ``B`` rows
  when ``rowwise=True``), so a backward costs one call per perturbation;
* ``batched=True`` — ``x`` is a stack of query points ``(K, *point_shape)`` with
  ``K ≤ max_points``; a forward and all perturbations of its backward go in as few calls
  as ``max_points`` allows. ``point_shape`` is a row's shape when ``rowwise=True``, the
  whole input's shape otherwise.

A failure is an exception in the program (crash, time-out, malformed output) or, checked by
the black box, a NaN/inf output. ``on_failure``:

* ``"raise"`` — :class:`ProgramError` naming the program and the failing input;
* ``"propagate"`` — the failed points give NaN outputs, and the gradient rows that used them
  are NaN;
* ``"omit"`` — the failed points give NaN outputs, a failed forward row gets a zero gradient
  and failed perturbations are left out of their row's estimate.

The values are scipy's ``nan_policy`` vocabulary (``"raise"``, ``"propagate"``, ``"omit"``),
shared with :class:`~zeroth.ZOOptimizer`'s ``on_failure``. The former spellings ``"nan"``
(= ``"propagate"``) and ``"skip"`` (= ``"omit"``) are accepted for one release with a
:class:`~zeroth.errors.ZerothDeprecationWarning`.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any, Callable, Literal, Optional, overload

import torch
from torch import Tensor

from ..errors import EvaluationError, ZerothWarning, warn_deprecated

FAILURE_POLICIES = ("raise", "propagate", "omit")
RENAMED_POLICIES = {"nan": "propagate", "skip": "omit"}
"""Former ``on_failure`` spellings → the current ones (deprecated, one release)."""


class ProgramError(EvaluationError):
    """A black-box program failed (exception, time-out, malformed or non-finite output).

    The message names the program, the attempts and the failing input; the program's own
    exception is chained as ``__cause__``, and notes say which point of a forward failed.
    """


class ProgramWarning(ZerothWarning, RuntimeWarning):
    """A black-box program failed and the ``"propagate"``/``"omit"`` policy let the run go on (or a retry follows).

    A :class:`~zeroth.errors.ZerothWarning` (one filter on ``ZerothWarning`` catches it) and
    also a ``RuntimeWarning``, so existing ``RuntimeWarning`` filters keep working.
    """


def check_policy(on_failure: Any) -> str:
    """``on_failure``, checked to be one of ``"raise"``, ``"propagate"``, ``"omit"``.

    The former spellings ``"nan"`` and ``"skip"`` are translated (``"propagate"``, ``"omit"``)
    with a :class:`~zeroth.errors.ZerothDeprecationWarning`.

    Returns:
        The policy in the current spelling.

    Raises:
        ValueError: any other value (the message lists the three).
    """
    if isinstance(on_failure, str) and on_failure in RENAMED_POLICIES:
        warn_deprecated(f"on_failure={on_failure!r}", f"on_failure={RENAMED_POLICIES[on_failure]!r}", stacklevel=4)
        return RENAMED_POLICIES[on_failure]
    if on_failure not in FAILURE_POLICIES:
        raise ValueError(
            f"Invalid on_failure value: {on_failure!r} (expected one of {', '.join(map(repr, FAILURE_POLICIES))})"
        )
    return on_failure


@overload
def check_count(name: str, value: Any, minimum: int, allow_none: Literal[False] = False) -> int: ...


@overload
def check_count(name: str, value: Any, minimum: int, allow_none: bool) -> Optional[int]: ...


def check_count(name: str, value: Any, minimum: int, allow_none: bool = False) -> Optional[int]:
    """``value`` as an int, checked to be an integer ``>= minimum`` (``bool`` is refused).

    Args:
        name: the argument's name, used in the error message.
        value: the value to check.
        minimum: the smallest value allowed.
        allow_none: accept None (returned as None).

    Raises:
        ValueError: ``value`` is not an integer ``>= minimum`` (or None when not allowed).
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"Invalid {name} value: {value!r} ({name} must be an integer >= {minimum})")
    return int(value)


def describe(x: Tensor, limit: int = 6) -> str:
    """A short, readable rendering of one input point for error messages."""
    flat = x.detach().reshape(-1).tolist()
    head = ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in flat[:limit])
    more = f", ... ({len(flat)} values)" if len(flat) > limit else ""
    return f"[{head}{more}]"


class Program:
    """Base class: ``run(x, *context)`` does the work; ``__call__`` adds retries and error wrapping.

    Args:
        name: used in every error message (defaults to the wrapped object's name).
        batched: whether ``run`` accepts a stack of any number of query points (see module doc).
        max_points: at most this many query points per call when batched (None: no limit).
        on_failure: ``"raise"``, ``"propagate"`` or ``"omit"`` (see module doc).
        retries: extra attempts after a failed run (for flaky programs; a deterministic
            failure fails again).

    Attributes:
        attempts: runs started (retries included).
        failed_attempts: runs that raised.

    Raises:
        TypeError: ``batched`` is not a bool.
        ValueError: ``max_points`` is not an integer ≥ 1 (or None) or is given without
            ``batched=True``, ``on_failure`` is not one of the three, ``retries`` is not an integer ≥ 0.
    """

    def __init__(
        self,
        *,
        name: str,
        batched: bool = False,
        max_points: Optional[int] = None,
        on_failure: str = "raise",
        retries: int = 0,
    ):
        if not isinstance(batched, bool):
            raise TypeError(f"batched must be a bool, got {type(batched).__name__}")
        self.name = str(name)
        self.batched = batched
        self.max_points = check_count("max_points", max_points, 1, allow_none=True)
        if self.max_points is not None and not batched:
            raise ValueError("max_points only applies to batched programs (batched=True)")
        self.on_failure = check_policy(on_failure)
        self.retries = check_count("retries", retries, 0)
        self.attempts = 0  # runs started, retries included
        self.failed_attempts = 0

    def run(self, x: Tensor, *context: Any) -> Tensor:
        """Evaluate the program at ``x``; raise any exception on failure (a subclass implements it).

        Args:
            x: the input (see the module doc for what it is, batched or not).
            *context: the black box's context arguments, unperturbed.

        Returns:
            A floating tensor: ``(K, *out_point)`` for ``K`` batched points, else the output.

        Raises:
            NotImplementedError: in the base class.
        """
        raise NotImplementedError

    def __call__(self, x: Tensor, *context: Any) -> Tensor:
        """``run`` with retries; a final failure is a :class:`ProgramError` naming program and input.

        Raises:
            ProgramError: every attempt failed (``KeyboardInterrupt``/``SystemExit`` pass through).
        """
        last: Optional[BaseException] = None
        for attempt in range(self.retries + 1):
            self.attempts += 1
            try:
                return self.run(x, *context)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as err:  # a program failure: retry, then report
                self.failed_attempts += 1
                last = err
                if attempt < self.retries:
                    warnings.warn(
                        f"{self.name}: attempt {attempt + 1} of {self.retries + 1} failed ({err}); retrying",
                        ProgramWarning,
                        stacklevel=2,
                    )
        assert last is not None
        if isinstance(last, ProgramError):
            raise last
        if self.batched and x.dim():
            where = f"{x.shape[0]} query point(s) (first {describe(x[0])})"
        else:
            where = f"input of shape {tuple(x.shape)} {describe(x)}"
        raise ProgramError(
            f"program {self.name!r} failed after {self.retries + 1} attempt(s) on {where}: "
            f"{type(last).__name__}: {last}"
        ) from last

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, batched={self.batched}, max_points={self.max_points}, "
            f"on_failure={self.on_failure!r}, retries={self.retries})"
        )


def _name_of(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _as_float_tensor(value: Any, name: str, like: Tensor, dtype: Optional[torch.dtype]) -> Tensor:
    """``value`` as a floating tensor on ``like``'s device; malformed output is a TypeError."""
    try:
        out = torch.as_tensor(value)
    except Exception as err:
        raise TypeError(f"{name} returned {type(value).__name__}, which is not convertible to a tensor") from err
    if not (out.is_floating_point() or out.dtype in (torch.int32, torch.int64, torch.bool)):
        raise TypeError(f"{name} returned values of dtype {out.dtype}; expected real numbers")
    if dtype is not None:
        out = out.to(dtype)
    elif not out.is_floating_point():
        out = out.to(like.dtype if like.is_floating_point() else torch.get_default_dtype())
    return out.to(like.device)


class TensorFunction(Program):
    """A Python callable on torch tensors (``fn(x, *context) -> tensor``), called under ``torch.no_grad()``.

    Args:
        fn: the callable; its output may be anything ``torch.as_tensor`` accepts.
        name: used in error messages (default: ``fn.__name__``).
        **options: ``batched``, ``max_points``, ``on_failure``, ``retries`` (see :class:`Program`).

    Raises:
        TypeError: ``fn`` is not callable (and :class:`Program`'s errors for the options).
    """

    def __init__(self, fn: Callable[..., Any], *, name: Optional[str] = None, **options: Any):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        super().__init__(name=name or _name_of(fn), **options)
        self.fn = fn

    def run(self, x: Tensor, *context: Any) -> Tensor:
        """``fn(x, *context)`` as a floating tensor on ``x``'s device.

        Integer/bool outputs become ``x``'s dtype (or the default dtype).

        Raises:
            TypeError: the output is not convertible to a tensor of real numbers.
        """
        with torch.no_grad():
            return _as_float_tensor(self.fn(x, *context), self.name, x, None)


class NumpyFunction(Program):
    """A numpy/scipy callable: tensors go in as arrays, arrays come back as tensors.

    Inputs are converted with ``.cpu().numpy()`` (float64 when ``float64=True``, the safe
    choice for most scientific codes); outputs come back on the input's device with the
    input's dtype (or ``dtype``). Tensor context arguments are converted the same way.

    Args:
        fn: ``fn(array, *context) -> array-like``.
        name: used in error messages (default: ``fn.__name__``).
        float64: pass floating inputs as float64 arrays (default True).
        dtype: dtype of the returned tensor (default: the input's).
        **options: ``batched``, ``max_points``, ``on_failure``, ``retries`` (see :class:`Program`).

    Raises:
        TypeError: ``fn`` is not callable or ``dtype`` is not a floating ``torch.dtype``.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: Optional[str] = None,
        float64: bool = True,
        dtype: Optional[torch.dtype] = None,
        **options: Any,
    ):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        super().__init__(name=name or _name_of(fn), **options)
        self.fn = fn
        self.float64 = bool(float64)
        self.dtype = dtype

    def _to_numpy(self, t: Any) -> Any:
        if not isinstance(t, Tensor):
            return t
        t = t.detach().cpu()
        if self.float64 and t.is_floating_point():
            t = t.double()
        return t.numpy()

    def run(self, x: Tensor, *context: Any) -> Tensor:
        """``fn`` on numpy copies of ``x`` and the context, its output as a tensor on ``x``'s device.

        Raises:
            TypeError: the output is not convertible to a tensor of real numbers.
        """
        out = self.fn(self._to_numpy(x), *(self._to_numpy(c) for c in context))
        return _as_float_tensor(out, self.name, x, self.dtype or (x.dtype if x.is_floating_point() else None))


def from_numpy(fn: Callable[..., Any], **options: Any) -> NumpyFunction:
    """Wrap a numpy/scipy callable ``fn(x, *context) -> array`` as a program.

    Args:
        fn: ``fn(array, *context) -> array-like`` (numpy in, anything array-like out).
        **options: ``batched``, ``max_points``, ``on_failure``, ``retries``, ``name``,
            ``float64``, ``dtype`` (see :class:`Program` and :class:`NumpyFunction`).

    Returns:
        A :class:`NumpyFunction` for :class:`~zeroth.blackbox.BlackBox`.

    Raises:
        TypeError: ``fn`` is not callable, or an option has the wrong type.
        ValueError: an option has an invalid value.
    """
    return NumpyFunction(fn, **options)


def batched(fn: Callable[..., Any], *, max_points: Optional[int] = None, **options: Any) -> Program:
    """Mark ``fn`` as taking a stack of query points ``(K, *point_shape)`` per call.

    ``fn`` works on torch tensors (for numpy use ``from_numpy(f, batched=True)``). All
    perturbations of a backward then go in one call (``max_points`` bounds the call size).

    Args:
        fn: ``fn(points, *context) -> outputs`` with ``points`` of shape ``(K, *point_shape)``
            and outputs of shape ``(K, *out_shape)``.
        max_points: at most this many points per call (None: no limit).
        **options: ``name``, ``on_failure``, ``retries`` (see :class:`Program`).

    Returns:
        A batched :class:`TensorFunction`.

    Raises:
        TypeError: ``fn`` is already a :class:`Program` or is not callable.
        ValueError: ``max_points`` or another option is invalid.
    """
    if isinstance(fn, Program):
        raise TypeError("batched: fn is already a Program; pass batched=True to its constructor instead")
    return TensorFunction(fn, batched=True, max_points=max_points, **options)


def as_program(fn: Any) -> Program:
    """``fn`` itself if it is a :class:`Program`, else a non-batched :class:`TensorFunction`.

    Raises:
        TypeError: ``fn`` is neither a :class:`Program` nor callable.
    """
    if isinstance(fn, Program):
        return fn
    if not callable(fn):
        raise TypeError(f"fn must be callable or a zeroth.blackbox.Program, got {type(fn).__name__}")
    return TensorFunction(fn)
