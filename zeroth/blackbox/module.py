r"""``BlackBox``: a program you cannot differentiate as an autograd node with a ZO backward.

Forward calls the program at the (detached) input; backward returns a zeroth-order estimate
of the vector–Jacobian product :math:`J^\top v`, so a network before it, a loss after it,
``loss.backward()`` and any torch optimizer work unchanged (hybrid first/zeroth order).

For a query point :math:`x\in\mathbb R^d` with output :math:`f(x)\in\mathbb R^m` and incoming
gradient :math:`v`, the estimate is the estimator's gradient of the scalar
:math:`x\mapsto\langle v, f(x)\rangle`, computed from the stored differences
:math:`f(x+s\mu d_i)-f(x)`::

    CGE:  Jᵀv ≈ Σ_k ⟨v, f(x + μ e_k) − f(x)⟩ / μ · e_k          (Jacobian columns)
    RGE:  Jᵀv ≈ (φ/q) Σ_i ⟨v, f(x + μ u_i) − f(x)⟩ / μ · u_i     (φ = d for sphere, else 1)

(central / antithetic variants use ``(f(x+μd) − f(x−μd))/2``); the coefficients come from the
estimator's own ``combine``.

**All program calls happen in forward** (the perturbed points only when a gradient is
needed): a crashed, hung or NaN-returning program therefore fails in forward, before
``backward`` touches any ``.grad`` and long before ``opt.step()`` changes a parameter.

References:
    Y. Zhang et al., "How to robustify black-box ML models? A zeroth-order optimization
    perspective", ICLR 2022, arXiv:2203.14195 (ZO-AE-DS: autograd before a ZO-estimated
    black box, the surrogate ⟨z, a⟩ with a detached estimate a).

    A. Chen et al., "DeepZero", ICLR 2024, arXiv:2310.02025 (CGE and RGE in this notation).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import add_note
from ..estimators import ESTIMATORS, Estimator
from ..randomness import make_generator
from .directions import PointDirections
from .program import Program, ProgramError, ProgramWarning, as_program, describe


class _ZOVJP(torch.autograd.Function):
    """Returns the precomputed output; backward asks the stored estimate for Jᵀv."""

    @staticmethod
    def forward(ctx, x: Tensor, estimate: VJPEstimate) -> Tensor:
        ctx.estimate = estimate
        return estimate.output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, v: Tensor):
        return ctx.estimate.vjp(v), None


class VJPEstimate:
    """What backward needs: the directions, ``f(x + sμd) − f(x)`` per point and the failure masks.

    Args:
        estimator: the black box's estimator (its ``combine`` is reused).
        dirs: the :class:`~zeroth.blackbox.PointDirections` of the forward.
        output: the forward's output (returned by the autograd node).
        diffs: ``(len(dirs), B, m)`` float64: ``f`` at each perturbed point minus ``f(x)``.
        bad: ``(1 + len(dirs), B)`` bool: failed points, row 0 the forward point.
        policy: the program's ``on_failure``.
        x: the forward's input (its shape and dtype shape the gradient).
    """

    def __init__(
        self,
        estimator: Estimator,
        dirs: PointDirections,
        output: Tensor,
        diffs: Tensor,
        bad: Tensor,
        policy: str,
        x: Tensor,
    ):
        self.estimator, self.dirs, self.output = estimator, dirs, output
        self.diffs = diffs  # (len(dirs), B, m)
        self.bad = bad  # (1 + len(dirs), B): failed points, row 0 = forward
        self.policy = policy
        self.x_shape, self.x_dtype = x.shape, x.dtype

    def vjp(self, v: Tensor) -> Tensor:
        """The estimate of ``Jᵀv`` for the incoming gradient ``v`` (shaped like the output).

        Under ``on_failure="omit"`` failed perturbations are left out of their row's estimate
        (random directions: the mean over the directions that worked) and a failed forward
        row gets 0; under ``"propagate"`` they make the row NaN.

        Returns:
            A tensor shaped like ``x``, in ``x``'s dtype.
        """
        dirs, n = self.dirs, self.dirs.num_directions
        v = v.reshape(dirs.batch, -1).to(self.diffs.dtype)
        s = torch.einsum("ebm,bm->eb", self.diffs, v)  # ⟨v, f(x + sμd_e) − f(x)⟩, (len(dirs), B)
        skip = self.policy == "omit"
        if skip:
            s = torch.where(self.bad[1:], torch.zeros_like(s), s)
        coeffs = self.estimator.combine(dirs, torch.zeros_like(s[0]), s)  # (n, B)
        if skip:
            ok = ~self.bad[1 : 1 + n]
            if dirs.num_signs == 2:
                ok = ok & ~self.bad[1 + n :]
            coeffs = torch.where(ok, coeffs, torch.zeros_like(coeffs))
            if dirs.vectors is not None:  # average over the directions that worked
                coeffs = coeffs * (n / ok.sum(0).clamp(min=1))
        grad = dirs.gradient(coeffs)  # (B, d)
        if skip:
            grad = torch.where(self.bad[0].unsqueeze(1), torch.zeros_like(grad), grad)
        return grad.reshape(self.x_shape).to(self.x_dtype)


def _take_rows(c: Any, index: Tensor) -> Any:
    """Rows ``index`` of a per-row context argument (tensor or array); anything else as is."""
    if isinstance(c, Tensor):
        return c[index.to(c.device)]
    if isinstance(c, np.ndarray):
        return c[index.numpy()]
    return c


class BlackBox(nn.Module):
    """An ``nn.Module`` around a non-differentiable program, with a ZO vector–Jacobian product.

    Args:
        fn: a :class:`~zeroth.blackbox.Program` (``from_numpy``, ``batched``, ``Subprocess``)
            or a plain callable on tensors ``fn(x, *context) -> tensor`` (called like forward).
        estimator: ``CGE(mu, scheme)`` (d or 2d extra points per row; Jacobian columns),
            ``RGE(q, mu, dist, antithetic)`` / ``SPSA`` (q or 2q per row), or a name.
        rowwise: each row of ``x`` (first dimension) is an independent query point, so the
            perturbations of all rows go into the same program call. With ``False`` the whole
            input is one point.
        seed / generator: every random direction is drawn from this generator (created from
            ``seed``, or seeded from torch's global RNG when both are None); its state is in
            ``state_dict``.

    ``forward(x, *context)``: ``x`` is a floating tensor (the differentiated input); ``context``
    arguments go to the program unperturbed and get no gradient (with ``rowwise=True`` tensor /
    array context must have ``x``'s first dimension: each row travels with its row of ``x``).

    The program is called in forward only: at ``x`` and, when ``x`` requires grad and grad mode
    is on, at all perturbed points too (so failures surface before any ``.grad`` changes).
    Failures follow the program's ``on_failure`` (see :mod:`zeroth.blackbox.program`).

    Counters (``counts()``, saved in ``state_dict``): program calls, query points, failed points.

    μ (the estimator's ``mu``) is an absolute step in the units of ``x``. The gradient of
    a point's output ``m``-vector is the estimator's gradient of ``⟨v, f(x)⟩``: CGE costs ``d``
    (forward) or ``2d`` (central) extra points per row, RGE ``q`` or ``2q``, SPSA ``2q``.

    Raises:
        TypeError: ``estimator`` is not a CGE/RGE/SPSA (kind ``"coordinates"`` or ``"random"``),
            ``fn`` is not callable, ``rowwise`` is not a bool, ``seed`` not an int or
            ``generator`` not a ``torch.Generator``.
        ValueError: both ``seed`` and ``generator`` are given, ``generator`` is not a CPU
            generator, or ``estimator`` is an unknown name.

    References:
        Y. Zhang et al., "How to robustify black-box ML models? A zeroth-order optimization
        perspective", ICLR 2022, arXiv:2203.14195.
    """

    def __init__(
        self,
        fn: Any,
        estimator: Any = "cge",
        *,
        rowwise: bool = True,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        self.program: Program = as_program(fn)
        self.estimator = ESTIMATORS.create(estimator, "estimator")
        if getattr(self.estimator, "kind", None) not in ("coordinates", "random"):
            raise TypeError(
                f"estimator must be CGE, RGE or SPSA (kind 'coordinates' or 'random'), "
                f"got {type(self.estimator).__name__}"
            )
        if not isinstance(rowwise, bool):
            raise TypeError(f"rowwise must be a bool, got {type(rowwise).__name__}")
        self.rowwise = rowwise
        self.generator = make_generator(seed, generator)
        self.num_calls = 0
        self.num_points = 0
        self.num_failed_points = 0
        self._out_point_shape: Optional[Tuple[int, ...]] = None

    # -- counters and checkpoints --------------------------------------------------------
    def counts(self) -> Dict[str, int]:
        """Program calls, query points sent, and points that failed (under ``"propagate"``/``"omit"``)."""
        return {"calls": self.num_calls, "points": self.num_points, "failed_points": self.num_failed_points}

    def add_counts(self, delta: Dict[str, int]) -> None:
        """Add calls made elsewhere (a Ray worker's copy of this module) to the counters."""
        self.num_calls += int(delta.get("calls", 0))
        self.num_points += int(delta.get("points", 0))
        self.num_failed_points += int(delta.get("failed_points", 0))

    def get_extra_state(self) -> Dict[str, Any]:
        """What ``state_dict`` saves besides tensors: the generator state and the counters."""
        return {"generator": self.generator.get_state(), **self.counts()}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`get_extra_state` returned (``load_state_dict`` calls it).

        Raises:
            ValueError: ``state`` is not a BlackBox extra state (no ``"generator"`` entry).
        """
        if not isinstance(state, dict) or "generator" not in state:
            raise ValueError("state_dict: not a BlackBox extra state (no 'generator' entry)")
        self.generator.set_state(state["generator"])
        self.num_calls = int(state["calls"])
        self.num_points = int(state["points"])
        self.num_failed_points = int(state["failed_points"])

    # -- forward ------------------------------------------------------------------------
    def forward(self, x: Tensor, *context: Any) -> Tensor:
        """The program's output at ``x``, as an autograd node whose backward is the ZO ``Jᵀv``.

        Args:
            x: floating tensor; with ``rowwise=True`` of shape ``(B, *point)`` (``B`` independent
                points), else one point of any shape.
            *context: further program arguments, unperturbed and without gradient; with
                ``rowwise=True`` a tensor/array context needs ``B`` rows (each travels with its row).

        Returns:
            ``(B, *out_point)`` (rowwise) or ``out_point``-shaped, in the program's output
            dtype; differentiable with respect to ``x`` when ``x.requires_grad`` and grad
            mode is on (then the perturbed points were evaluated here too).

        Raises:
            TypeError: ``x`` is not a floating-point tensor.
            ValueError: ``rowwise=True`` with a 0-d ``x``, or a context argument without ``B`` rows.
            zeroth.blackbox.ProgramError: the program failed under ``on_failure="raise"``
                (or failed on every call, so that no output shape is known). The generator is
                restored first.
        """
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(
                f"x must be a floating-point torch.Tensor, got {type(x).__name__}"
                + (f" of dtype {x.dtype}" if isinstance(x, Tensor) else "")
            )
        if self.rowwise and x.dim() == 0:
            raise ValueError("x: rowwise=True needs at least one dimension (the rows)")
        batch = x.shape[0] if self.rowwise else 1
        point_shape = tuple(x.shape[1:]) if self.rowwise else tuple(x.shape)
        if self.rowwise:
            for i, c in enumerate(context):
                if isinstance(c, (Tensor, np.ndarray)) and (c.ndim == 0 or c.shape[0] != batch):
                    raise ValueError(
                        f"context[{i}]: with rowwise=True it needs x's first dimension {batch}, "
                        f"got shape {tuple(c.shape)}"
                    )
        flat = x.detach().reshape(batch, -1)
        need_grad = torch.is_grad_enabled() and x.requires_grad
        gen_state = self.generator.get_state()
        try:
            dirs = None
            points = flat.unsqueeze(0)
            if need_grad:
                dirs = PointDirections(
                    self.estimator, batch, flat.shape[1], generator=self.generator, dtype=torch.float64, device=x.device
                )
                points = torch.cat([points, dirs.points(flat)])  # (1 + len(dirs), B, d)
            values, bad, out_point_shape = self._evaluate(points, point_shape, context)
        except BaseException:
            self.generator.set_state(gen_state)
            raise
        out_shape = ((batch,) if self.rowwise else ()) + out_point_shape
        output = values[0].reshape(out_shape).clone()
        if not need_grad or dirs is None:  # dirs is None exactly when no gradient is needed
            return output
        diffs = values[1:].to(torch.float64) - values[0].to(torch.float64)  # no rounding of the difference
        estimate = VJPEstimate(self.estimator, dirs, output, diffs, bad, self.program.on_failure, x)
        return _ZOVJP.apply(x, estimate)

    # -- calling the program --------------------------------------------------------------
    def _calls(self, num_evals: int, batch: int) -> List[Tuple[int, int]]:
        """Flat point ranges ``[start, stop)`` of each program call (points ordered eval-major)."""
        total = num_evals * batch
        if self.program.batched:
            size = self.program.max_points or total
        else:
            size = batch  # one call per evaluation: all rows (rowwise) or the single point
        return [(a, min(a + size, total)) for a in range(0, total, max(size, 1))]

    def _call_input(self, flat_points: Tensor, start: int, stop: int, batch: int, point_shape, context):
        """The arguments of one call covering flat points ``start:stop``."""
        pts = flat_points[start:stop]
        if self.program.batched:
            ctx = context
            if self.rowwise:
                rows = torch.arange(start, stop) % batch
                ctx = tuple(_take_rows(c, rows) for c in context)
            return pts.reshape((stop - start,) + point_shape), ctx
        if self.rowwise:
            return pts.reshape((batch,) + point_shape), context
        return pts.reshape(point_shape), context

    def _where(self, e: int, num_evals: int) -> str:
        return "the forward point" if e == 0 else f"perturbed point {e} of {num_evals - 1} (for the ZO backward)"

    def _evaluate(self, points: Tensor, point_shape, context) -> Tuple[Tensor, Tensor, Tuple[int, ...]]:
        """Values ``(E, B, *out)`` flattened to ``(E, B, m)``, failures ``(E, B)``, and the point shape ``out``."""
        num_evals, batch, _ = points.shape
        flat_points = points.reshape(num_evals * batch, -1)
        program = self.program
        pieces: List[Optional[Tensor]] = []
        shape: Optional[Tuple[int, ...]] = None  # output point shape seen in this forward
        first_error: Optional[ProgramError] = None
        ranges = self._calls(num_evals, batch)
        for start, stop in ranges:
            args, ctx = self._call_input(flat_points, start, stop, batch, point_shape, context)
            self.num_calls += 1
            self.num_points += stop - start
            try:
                out, point = self._check_output(program(args, *ctx), stop - start, shape)
                shape = point
                pieces.append(out)
            except ProgramError as err:
                add_note(
                    err,
                    f"zeroth.blackbox: the call covered {self._where(start // batch, num_evals)}"
                    + (f" (rows {start % batch}..{(stop - 1) % batch})" if self.rowwise else ""),
                )
                if program.on_failure == "raise":
                    raise
                first_error = first_error or err
                pieces.append(None)
        if shape is None:  # every call failed: NaN outputs need the shape of an earlier forward
            shape = self._out_point_shape
            if shape is None:
                assert first_error is not None
                add_note(
                    first_error,
                    f"zeroth.blackbox: on_failure={program.on_failure!r} cannot fill NaN outputs: "
                    "the program has never returned an output, so its output shape is unknown",
                )
                raise first_error
        self._out_point_shape = shape
        m = math.prod(shape)
        dtype = next((p.dtype for p in pieces if p is not None), points.dtype)
        values = torch.empty(num_evals * batch, m, dtype=dtype, device=points.device)
        failed = torch.zeros(num_evals * batch, dtype=torch.bool, device=points.device)
        for (start, stop), piece in zip(ranges, pieces):
            if piece is None:
                failed[start:stop] = True
                values[start:stop] = float("nan")
            else:
                values[start:stop] = piece.reshape(stop - start, m).to(device=points.device, dtype=dtype)
        bad = failed | ~torch.isfinite(values).all(dim=1)
        if bool(bad.any()):
            self._handle_failures(bad, values, flat_points, num_evals, batch)
        return values.reshape(num_evals, batch, m), bad.reshape(num_evals, batch), shape

    def _check_output(self, out: Tensor, num_points: int, shape) -> Tuple[Tensor, Tuple[int, ...]]:
        """Outputs of one call as ``(num_points, *point_shape)``; shape errors name the program."""
        name = self.program.name
        if self.program.batched or self.rowwise:
            if out.dim() == 0 or out.shape[0] != num_points:
                raise ProgramError(
                    f"program {name!r} returned shape {tuple(out.shape)} for {num_points} query "
                    f"point(s); expected the first dimension to be {num_points}"
                )
            point = tuple(out.shape[1:])
        else:
            point = tuple(out.shape)
            out = out.unsqueeze(0)
        if shape is not None and point != shape:
            raise ProgramError(
                f"program {name!r} returned points of shape {point}, earlier {shape} in the same forward"
            )
        return out, point

    def _handle_failures(self, bad, values, flat_points, num_evals, batch) -> None:
        """``"raise"``: a ProgramError naming the first failing input; else NaN outputs and a warning."""
        idx = bad.nonzero().reshape(-1)
        first = int(idx[0])
        e, row = divmod(first, batch)
        name = self.program.name
        if self.program.on_failure == "raise":
            where = self._where(e, num_evals) + (f", row {row}" if self.rowwise else "")
            raise ProgramError(
                f"program {name!r} returned a non-finite output at {idx.numel()} of {bad.numel()} query point(s); "
                f"first: {where}, input {describe(flat_points[first])}, output {describe(values[first])}"
            )
        values[bad] = float("nan")
        self.num_failed_points += int(idx.numel())
        action = "NaN outputs and gradients" if self.program.on_failure == "propagate" else "left out of the estimate"
        warnings.warn(
            f"program {name!r} failed at {idx.numel()} of {bad.numel()} query point(s) ({action}); first: "
            f"{self._where(e, num_evals)}, input {describe(flat_points[first])}",
            ProgramWarning,
            stacklevel=3,
        )

    def extra_repr(self) -> str:
        """Program, estimator and ``rowwise`` in the module's ``repr``."""
        return f"program={self.program!r}, estimator={self.estimator!r}, rowwise={self.rowwise}"
