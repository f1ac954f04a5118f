"""``RayEvaluator``: the losses of one step computed by Ray actors, one per GPU or CPU slot.

Per step (the evaluator box of :mod:`zeroth.protocols`, spread over a cluster)::

    model      ──ray.put once──▶ every actor keeps a copy (sent again only if the structure changes)
    θ, buffers, batch, RNG ──ray.put once per step──▶ read by every actor from the object store
    directions ──split──▶ one piece per actor (coordinates of CGE, seeds of RGE/SPSA), sized by
                          measured speed ──▶ local evaluator on the actor ──▶ losses, back in order

The result is that of the local evaluator on the same pieces: with ``inner="sequential"``
bitwise the local ``SequentialEvaluator`` result; with ``FeatureReuseEvaluator``/``BatchedEvaluator`` equal up to float
rounding (their internal chunks follow the pieces). Every evaluation starts from the
driver's RNG state and buffers (common random numbers, as locally); afterwards the driver's
buffers and RNG are left as after the first evaluation — exactly what a local evaluator does.
A :class:`~zeroth.blackbox.BlackBox` inside the model counts the program calls its worker copies
made (each piece that needs the base loss evaluates it once: N pieces, N − 1 calls more than
locally; the calls of a worker that died mid-piece are not counted).
"""

from __future__ import annotations

import copy
import io
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from ..engine import EVALUATORS, Evaluator, Losses
from ..engine.base import YES, Support
from ..engine.stages import owns
from ..estimators.directions import Directions
from ..objective import Objective
from . import split
from .pool import WorkerPool, check_options, import_ray
from .worker import EvaluatorWorker, counters, move


def structure(model: nn.Module) -> tuple:
    """What a model copy on a worker must share with ``model``: modules, tensor names, shapes, dtypes.

    Returns:
        A hashable tuple; when it changes, the model is sent to the workers again.
    """
    return (
        tuple((n, type(m).__name__) for n, m in model.named_modules()),
        tuple((n, tuple(t.shape), t.dtype) for n, t in model.named_parameters()),
        tuple((n, tuple(t.shape), t.dtype) for n, t in model.named_buffers()),
    )


@EVALUATORS.register("ray")
class RayEvaluator(Evaluator):
    """Spreads the evaluations of each step over Ray actors, each wrapping a local evaluator.

    Args:
        inner: the evaluator each actor runs: ``"auto"`` (default: FeatureReuseEvaluator when it applies,
            else the faster of BatchedEvaluator and SequentialEvaluator, decided per actor), ``"feature_reuse"``,
            ``"batched"``, ``"sequential"`` or an :class:`~zeroth.engine.Evaluator` instance.
        num_workers: number of actors; None: as many as ``resources_per_worker`` fit in the cluster.
        resources_per_worker: Ray resources of one actor, e.g. ``{"GPU": 1}`` or ``{"CPU": 2}``;
            None: ``{"GPU": 1}`` when the cluster has GPUs, else ``{"CPU": 1}``. An actor's
            torch uses as many threads as it has CPUs (at least one).
        address: the Ray cluster to join (``"auto"``, ``"ray://head:10001"``); None joins the one
            ``RAY_ADDRESS`` names, else starts Ray on this machine. A running Ray is used as is.
        max_failures: worker failures (death, out of memory) tolerated within one step; the piece
            of a failed worker is re-run whole on another one, so the result is unchanged. One
            more raises :class:`~zeroth.distributed.WorkerFailureError` before anything changed.
        balance: ``"measured"`` (pieces proportional to each actor's measured speed, re-balanced
            when a step is more than 10% out of balance) or ``"even"`` (fixed equal pieces:
            bitwise reproducible runs with every inner evaluator).
        blocks_per_worker: directions are cut into this many blocks per actor and handed out
            interleaved, so each actor gets a fair mix of cheap and costly directions.
        ray_init: extra arguments of ``ray.init`` when this evaluator starts Ray.

    Actors start on the first step (or ``start()``) and stop with ``close()`` (or when the
    evaluator is garbage-collected). Needs an :class:`~zeroth.Objective`: its model is what
    the actors copy; a plain closure cannot be split.

    Attributes:
        stats: ``{"steps", "model_sends", "failures", "last_step"}``; ``last_step`` has the
            wall time, compute time, overhead and pieces of the last step.

    Raises:
        ImportError: Ray is not installed (the message names the ``ray`` extra).
        ValueError: ``inner`` is ``"ray"``/a RayEvaluator or an unknown name, or an invalid
            ``num_workers``, ``max_failures``, ``balance``, ``blocks_per_worker`` or
            ``resources_per_worker`` value.
        TypeError: ``inner`` is neither a name nor an Evaluator, ``address`` is not a string, or
            ``resources_per_worker`` is not a non-empty mapping.
    """

    name = "ray"

    def __init__(
        self,
        inner: Any = "auto",
        *,
        num_workers: Optional[int] = None,
        resources_per_worker: Optional[Mapping[str, float]] = None,
        address: Optional[str] = None,
        max_failures: int = 3,
        balance: str = "measured",
        blocks_per_worker: int = 32,
        ray_init: Optional[Mapping[str, Any]] = None,
    ):
        resources = check_options(num_workers, resources_per_worker, address, max_failures, balance)
        if isinstance(inner, RayEvaluator) or (isinstance(inner, str) and inner.lower() == "ray"):
            raise ValueError("inner: a RayEvaluator cannot run inside another one")
        if not isinstance(inner, (str, Evaluator)):
            raise TypeError(f"inner must be an evaluator name or an Evaluator instance, got {type(inner).__name__}")
        self._local = EVALUATORS.create(inner, "inner")  # what the workers run, to check objectives here
        if isinstance(blocks_per_worker, bool) or not isinstance(blocks_per_worker, int) or blocks_per_worker < 1:
            raise ValueError(f"Invalid blocks_per_worker value: {blocks_per_worker!r} (an integer >= 1)")
        import_ray()
        self.inner = inner
        self.max_failures = int(max_failures)
        self.pool = WorkerPool(
            EvaluatorWorker,
            (inner,),
            num_workers=num_workers,
            resources_per_worker=resources,
            address=address,
            max_failures=max_failures,
            balance=balance,
            blocks_per_worker=blocks_per_worker,
            ray_init=ray_init,
        )
        self._model: Optional[nn.Module] = None
        self._structure: Optional[tuple] = None
        self._model_box: Optional[List[Any]] = None
        self._version = 0
        self.stats: Dict[str, Any] = {"steps": 0, "model_sends": 0, "failures": 0, "last_step": {}}

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> RayEvaluator:
        """Start Ray (if needed) and the actors now rather than on the first step."""
        self.pool.start()
        return self

    def close(self) -> None:
        """Stop the actors (Ray keeps running); the next step starts new ones."""
        self.pool.close()
        self._model = self._structure = self._model_box = None

    def __enter__(self) -> RayEvaluator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def workers(self) -> List[Any]:
        """Handles of the live actors (``ray.kill(evaluator.workers[0])`` simulates a lost worker)."""
        return [s.handle for s in self.pool.live()]

    def describe(self) -> List[Dict[str, Any]]:
        """One dict per actor: number, device, node, pid, measured speed (directions per second)."""
        return self.pool.describe()

    # -- applicability --------------------------------------------------------------------
    def supports(
        self, objective: Any, dirs: Optional[Directions] = None, params: Optional[Sequence[Tensor]] = None
    ) -> Support:
        """Whether a step can run here: an :class:`~zeroth.Objective`, a splittable direction set,
        parameters of ``objective.model``, and a case the inner evaluator supports (checked locally).

        A static check on the driver (Ray is not started).

        Returns:
            A :class:`~zeroth.engine.base.Support`: truthy when supported; a false one's
            ``reason`` names what is missing (for ``evaluator="auto"``'s ``explain``).
        """
        if not isinstance(objective, Objective):
            return Support.no(
                "RayEvaluator needs an Objective(model, loss_fn, inputs, targets): its model is what "
                f"the Ray workers copy (got {type(objective).__name__}; a plain closure cannot be "
                "shipped)"
            )
        if dirs is not None and not split.can_split(dirs):
            return Support.no(
                f"{type(dirs).__name__} cannot be split across workers (it declares no subset/to_devices)"
            )
        if params is not None and not owns([objective.model], params):
            return Support.no("a perturbed parameter is not a parameter of objective.model")
        inner = self._local.supports(objective, dirs, params)
        if not inner:
            why = getattr(inner, "reason", "") or "declined"
            return Support.no(f"inner evaluator {self.inner!r} does not apply: {why}")
        return inner if isinstance(inner, Support) else YES

    def _check(self, objective: Any, params: Sequence[Tensor], dirs: Directions) -> None:
        support = self.supports(objective, dirs, params)
        if support:
            return
        if not isinstance(objective, Objective) or not split.can_split(dirs):
            raise TypeError(support.reason)
        raise ValueError(support.reason)

    # -- the step -------------------------------------------------------------------------
    def evaluate(self, objective: Any, params: Sequence[Tensor], dirs: Directions) -> Losses:
        """The losses of ``dirs``, computed by the actors (one piece each) and put back in order.

        Starts Ray and the actors on first use; sends the model when it is new or its
        structure changed, and the parameters, buffers, batch and RNG state once per step.
        Afterwards buffers and RNG are as after the first evaluation (as a local evaluator
        leaves them); parameters are not changed.

        Args:
            objective: an :class:`~zeroth.Objective` (its batch is sent to every actor).
            params: parameters of ``objective.model`` that ``dirs`` perturbs.
            dirs: a splittable direction set (Coordinates, RandomDirections).

        Returns:
            :class:`~zeroth.engine.Losses` on the device of ``params[0]``.

        Raises:
            TypeError: a plain closure instead of an Objective, or ``dirs`` cannot be split.
            ValueError: a parameter is not one of ``objective.model``, or the inner evaluator
                does not support the case; or the workers do not fit in the cluster.
            zeroth.distributed.WorkerFailureError: more worker failures than ``max_failures``
                (nothing was changed).

        An exception raised by the objective on a worker is re-raised here with a note naming the worker.
        """
        self._check(objective, params, dirs)
        ray = import_ray()
        start = time.perf_counter()
        plan = self.pool.plan(dirs.num_directions)
        model = objective.model
        model_box = self._send_model(ray, model)
        index = {id(p): i for i, p in enumerate(model.parameters())}
        cuda = next((p.device for p in params if p.device.type == "cuda"), None)
        step = {
            "objective": _shell(objective),
            "state": [t.detach().cpu() for t in list(model.parameters()) + list(model.buffers())],
            "training": [m.training for m in model.modules()],
            "param_index": [index[id(p)] for p in params],
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(cuda) if cuda is not None else None,
        }
        step_box = [ray.put(step)]
        ids = [split.members(piece) for _, piece in plan]
        pieces = [split.subset(dirs, i) for i in ids]
        # the piece holding direction 0: its first evaluation is the first one of a local evaluator
        first = next((k for k, i in enumerate(ids) if i.numel() and int(i[0]) == 0), 0)
        put_seconds = time.perf_counter() - start

        def submit(handle: Any, i: int) -> Any:
            return handle.evaluate.remote(model_box, step_box, pieces[i], i == first)

        failures_before = self.pool.failures
        results = self.pool.run(plan, submit, what=f"a step of {len(dirs)} evaluations")
        self.stats["failures"] += self.pool.failures - failures_before

        device = params[0].device if params else torch.device("cpu")
        perturbed = torch.empty(len(dirs), dtype=torch.float64)
        for i, res in zip(ids, results):
            split.scatter(dirs, i, res["perturbed"], perturbed)
        counted = counters(model)
        for res in results:  # black boxes in the workers' copies called their programs: count it here
            for i, delta in res.get("counts", {}).items():
                if i in counted:
                    counted[i].add_counts(delta)
        lead = results[first]
        base = lead["base"].to(device) if dirs.needs_base else None
        with torch.no_grad():  # buffers and RNG as after the first evaluation, as a local evaluator leaves them
            for b, v in zip(model.buffers(), lead["buffers"]):
                b.copy_(v)
        torch.set_rng_state(lead["rng"])
        if cuda is not None and lead["cuda_rng"] is not None:
            torch.cuda.set_rng_state(lead["cuda_rng"], cuda)
        self.stats["steps"] += 1
        self.stats["last_step"] = {
            **self.pool.last_call,
            "prepare": put_seconds,
            "seconds": time.perf_counter() - start,
        }
        return Losses(base, perturbed.to(device))

    def _send_model(self, ray: Any, model: nn.Module) -> List[Any]:
        """The object-store reference of the model copy, put there again only for a new model or structure."""
        shape = structure(model)
        if model is not self._model or shape != self._structure or self._model_box is None:
            from ray import cloudpickle

            buf = io.BytesIO()
            torch.save(model, buf, pickle_module=cloudpickle)
            self._version += 1
            self._model_box = [self._version, ray.put(buf.getvalue())]
            self._model, self._structure = model, shape
            self.stats["model_sends"] += 1
        return self._model_box

    def __repr__(self) -> str:
        return (
            f"RayEvaluator(inner={self.inner!r}, num_workers={self.pool.num_workers}, "
            f"resources_per_worker={self.pool.resources}, max_failures={self.max_failures})"
        )


def _shell(objective: Objective) -> Objective:
    """The objective without its model (the workers have their own copy), batch on the CPU."""
    shell = copy.copy(objective)
    # no model on purpose (each worker sets its own copy before calling it); Objective.model is
    # typed nn.Module for every objective that is called, so the checker cannot know the shell is not
    shell.model = None  # type: ignore[assignment]
    shell.inputs = move(objective.inputs, torch.device("cpu"))
    shell.targets = move(objective.targets, torch.device("cpu"))
    return shell
