"""``RayPool``: a black-box program run by a pool of Ray actors (a pool of simulator workers).

A :class:`~zeroth.blackbox.BlackBox` sends the forward point and every perturbed point of
its ZO backward as one stack of query points; ``RayPool`` spreads that stack over its actors
(shares proportional to measured speed), each running the wrapped program, and returns the
outputs in order. A worker that dies has its points re-run on another one; the program's
own ``retries`` / ``on_failure`` apply to what fails on a worker (see
:mod:`zeroth.blackbox.program`).
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from ..blackbox.program import Program, as_program
from . import split
from .pool import WorkerPool, check_options, import_ray
from .worker import ProgramWorker


class RayPool(Program):
    """A batched program whose query points are evaluated by Ray actors running ``fn``.

    Args:
        fn: the program each actor runs: a :class:`~zeroth.blackbox.Program` (``from_numpy``,
            ``batched``, ``Subprocess``) or a callable on one point (``fn(point, *context)``).
            A batched program gets the actor's whole share of points in one call; any other is
            called once per point. ``fn`` is sent to each actor once, when it starts.
        num_workers, resources_per_worker, address, max_failures, ray_init: as for
            :class:`~zeroth.distributed.RayEvaluator` (default: one actor per CPU, or per GPU).
        split_context: tensor/array context arguments whose first dimension is the number of
            points travel with their points (how ``BlackBox(rowwise=True)`` passes per-row
            context); ``False`` sends every context argument whole to every actor.
        name, max_points, on_failure, retries: see :class:`~zeroth.blackbox.Program`
            (``retries`` re-runs a whole call that failed; worker deaths are handled separately).

    Raises:
        ImportError: Ray is not installed (the message names the ``ray`` extra).
        TypeError: ``fn`` is not callable, ``split_context`` is not a bool, or an invalid
            ``address``/``resources_per_worker`` type.
        ValueError: an invalid ``num_workers``, ``max_failures``, ``resources_per_worker``,
            ``max_points``, ``on_failure`` or ``retries`` value.
    """

    def __init__(
        self,
        fn: Any,
        *,
        num_workers: Optional[int] = None,
        resources_per_worker: Optional[Mapping[str, float]] = None,
        address: Optional[str] = None,
        max_failures: int = 3,
        split_context: bool = True,
        name: Optional[str] = None,
        max_points: Optional[int] = None,
        on_failure: str = "raise",
        retries: int = 0,
        ray_init: Optional[Mapping[str, Any]] = None,
    ):
        program = as_program(fn)
        resources = check_options(num_workers, resources_per_worker, address, max_failures, "measured")
        if not isinstance(split_context, bool):
            raise TypeError(f"split_context must be a bool, got {type(split_context).__name__}")
        super().__init__(
            name=name or f"RayPool({program.name})",
            batched=True,
            max_points=max_points,
            on_failure=on_failure,
            retries=retries,
        )
        import_ray()
        self.program = program
        self.split_context = split_context
        self.pool = WorkerPool(
            ProgramWorker,
            (),
            num_workers=num_workers,
            resources_per_worker=resources,
            address=address,
            max_failures=max_failures,
            ray_init=ray_init,
        )
        self._program_ref = None

    def start(self) -> RayPool:
        """Start Ray (if needed) and the actors now rather than on the first call."""
        if not self.pool.started:
            ray = import_ray()
            from .pool import connect

            connect(self.pool.address, self.pool.ray_init)
            self._program_ref = ray.put(self.program)
            self.pool.actor_args = (self._program_ref,)
            self.pool.start()
        return self

    def close(self) -> None:
        """Stop the actors (Ray keeps running)."""
        self.pool.close()
        self._program_ref = None

    @property
    def workers(self) -> List[Any]:
        """Handles of the live actors."""
        return [s.handle for s in self.pool.live()]

    def run(self, x: Tensor, *context: Any) -> Tensor:
        """The program at each of the ``K`` points ``x`` (``(K, *point)``), spread over the actors.

        Returns:
            ``(K, *out_point)`` outputs in the order of ``x``, on ``x``'s device.

        Raises:
            RuntimeError: an actor's program returned another number of outputs than points.
            zeroth.distributed.WorkerFailureError: more worker failures than ``max_failures``.
            ValueError: the actors do not fit in the Ray cluster (on first use).

        A failure of the program on an actor is re-raised here (the program's own error,
        with a note naming the worker); :class:`~zeroth.blackbox.Program` wraps it as usual.
        """
        self.start()
        k = int(x.shape[0])
        rows = [
            self.split_context and isinstance(c, (Tensor, np.ndarray)) and c.ndim > 0 and c.shape[0] == k
            for c in context
        ]
        points = x.detach().cpu()
        plan = self.pool.plan(k)
        ids = [split.members(piece) for _, piece in plan]

        def submit(handle: Any, i: int) -> Any:
            sel = ids[i]
            ctx = [_rows(c, sel) if r else c for c, r in zip(context, rows)]
            return handle.call.remote(points[sel], ctx, rows)

        results = self.pool.run(plan, submit, what=f"a call of {self.name!r} on {k} point(s)")
        outs = [r["out"] for r in results]
        shaped = next((o for o in outs if o.shape[0]), outs[0])
        out = torch.empty((k,) + tuple(shaped.shape[1:]), dtype=shaped.dtype)
        for sel, o in zip(ids, outs):
            if o.shape[0] != sel.numel():
                raise RuntimeError(
                    f"program {self.program.name!r} returned {o.shape[0]} outputs for {sel.numel()} points"
                )
            out[sel] = o
        return out.to(x.device)

    def __repr__(self) -> str:
        return (
            f"RayPool({self.program!r}, num_workers={self.pool.num_workers}, "
            f"resources_per_worker={self.pool.resources}, on_failure={self.on_failure!r})"
        )


def _rows(c: Any, sel: Tensor) -> Any:
    if isinstance(c, Tensor):
        return c[sel.to(c.device)].cpu()
    return c[sel.numpy()]
