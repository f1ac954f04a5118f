"""A pool of Ray actors: start-up, speed-balanced plans, and re-running the work of a dead worker.

Both :class:`~zeroth.distributed.RayEvaluator` (loss evaluations of a model) and
:class:`~zeroth.distributed.RayPool` (query points of a black-box program) hand their work
out through a :class:`WorkerPool`:

1. ``plan(num_units)`` cuts the work (directions, query points) into blocks and gives each
   live worker an interleaved share proportional to its measured speed (units per second,
   as timed by the worker itself). The shares change only when the last call was out of
   balance by more than ``tolerance``, so chunks, and with them the rounding of the
   results, stay the same from step to step.
2. ``run(pieces, submit)`` sends one piece per worker and collects the results in order. A
   worker that dies meanwhile (killed, out of memory, node lost) has its piece re-run, whole,
   on the live worker that will be free first — the same piece, so the same values — and is
   replaced by a new actor that joins once it has started. More than ``max_failures``
   failures in one call raise :class:`WorkerFailureError`; the caller has changed nothing yet.
"""

from __future__ import annotations

import math
import numbers
import os
import time
import warnings
from types import ModuleType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from .._optional import require
from ..errors import ZerothError, ZerothWarning, add_note
from . import split


class WorkerFailureError(ZerothError, RuntimeError):
    """Ray workers failed more often within one call than ``max_failures`` allows.

    Raised before anything was written back: parameters, buffers and the RNG are unchanged.
    """


class WorkerFailureWarning(ZerothWarning, RuntimeWarning):
    """A Ray worker died; its work was re-run elsewhere, or a replacement could not start."""


def import_ray() -> ModuleType:
    """``ray``, or an ImportError naming the extra to install."""
    return require("ray", "ray")


def check_options(
    num_workers: Any, resources_per_worker: Any, address: Any, max_failures: Any, balance: Any
) -> Optional[Dict[str, float]]:
    """Validate the options shared by RayEvaluator and RayPool.

    Returns:
        ``resources_per_worker`` as ``{name: float}``, or None when it was None.

    Raises:
        ValueError: ``num_workers`` not an integer ≥ 1 (or None), ``max_failures`` not an
            integer ≥ 0, ``balance`` not ``"measured"``/``"even"``, or a resource amount that
            is negative or non-finite (or no positive CPU/GPU/custom amount at all).
        TypeError: ``address`` is not a string, or ``resources_per_worker`` is not a non-empty mapping.
    """
    if num_workers is not None and (
        isinstance(num_workers, bool) or not isinstance(num_workers, numbers.Integral) or num_workers < 1
    ):
        raise ValueError(f"Invalid num_workers value: {num_workers!r} (an integer >= 1, or None for one per device)")
    if isinstance(max_failures, bool) or not isinstance(max_failures, numbers.Integral) or max_failures < 0:
        raise ValueError(f"Invalid max_failures value: {max_failures!r} (an integer >= 0)")
    if address is not None and not isinstance(address, str):
        raise TypeError(
            f"address must be a string ('auto', 'ray://host:port', ...) or None, got {type(address).__name__}"
        )
    if balance not in ("measured", "even"):
        raise ValueError(f"Invalid balance value: {balance!r} (expected 'measured' or 'even')")
    if resources_per_worker is None:
        return None
    if not isinstance(resources_per_worker, Mapping) or not resources_per_worker:
        raise TypeError("resources_per_worker must be a non-empty dict such as {'GPU': 1} or {'CPU': 1}")
    out = {}
    for key, value in resources_per_worker.items():
        if (
            not isinstance(key, str)
            or isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(
                f"Invalid resources_per_worker entry {key!r}: {value!r} (a resource name and an amount >= 0)"
            )
        out[key] = float(value)
    if not any(v > 0 for k, v in out.items() if k != "memory"):
        raise ValueError(
            f"Invalid resources_per_worker value: {resources_per_worker!r} (needs a positive amount "
            "of CPU, GPU or a custom resource)"
        )
    return out


def connect(address: Optional[str], ray_init: Optional[Mapping[str, Any]]) -> ModuleType:
    """The ``ray`` module with a connection: the running one, a cluster (address / RAY_ADDRESS), or a new local one.

    Raises:
        ImportError: Ray is not installed (the message names the extra).
    """
    ray = import_ray()
    if not ray.is_initialized():
        kwargs = dict(ray_init or {})
        if address is not None:
            kwargs["address"] = address
        elif not os.environ.get("RAY_ADDRESS"):  # a new local instance: no dashboard to start
            kwargs.setdefault("include_dashboard", False)
        ray.init(**kwargs)
    return ray


class _Slot:
    """One worker: its actor, whether it started, its measured speed."""

    def __init__(self, number: int, handle: Any, ready: Any):
        self.number = number
        self.handle = handle
        self.ready = ready  # ObjectRef of handle.ready.remote(): resolves once started
        self.started = False
        self.info: Dict[str, Any] = {}
        self.speed: Optional[float] = None  # units per second (EMA)

    def __repr__(self) -> str:
        return f"worker {self.number} ({self.info.get('device', '?')} pid {self.info.get('pid', '?')})"


class WorkerPool:
    """Ray actors of class ``actor_cls(*actor_args)`` with speed-balanced, fault-tolerant calls.

    ``resources_per_worker=None`` takes one GPU per worker when the cluster has GPUs, else one
    CPU; ``num_workers=None`` as many workers as those resources allow. ``threads`` (torch
    intra-op threads in each actor) is the worker's CPU count, at least 1.

    Args:
        actor_cls: the worker class; it is constructed as ``actor_cls(threads, *actor_args)`` and
            must have ``ready()``.
        actor_args: further constructor arguments.
        num_workers, resources_per_worker, address, max_failures, balance, blocks_per_worker,
            ray_init: as for :class:`~zeroth.distributed.RayEvaluator` (validated there).
        tolerance: re-plan when a call's slowest worker took more than ``1 + tolerance`` times the mean.
        start_timeout: seconds to wait for the workers to start.
    """

    def __init__(
        self,
        actor_cls: type,
        actor_args: Sequence[Any],
        *,
        num_workers: Optional[int],
        resources_per_worker: Optional[Dict[str, float]],
        address: Optional[str],
        max_failures: int,
        balance: str = "measured",
        blocks_per_worker: int = 32,
        tolerance: float = 0.1,
        ray_init: Optional[Mapping[str, Any]] = None,
        start_timeout: float = 300.0,
    ):
        self.actor_cls = actor_cls
        self.actor_args = tuple(actor_args)
        self.num_workers = num_workers
        self.resources = resources_per_worker
        self.address = address
        self.max_failures = int(max_failures)
        self.balance = balance
        self.blocks_per_worker = int(blocks_per_worker)
        self.tolerance = float(tolerance)
        self.ray_init = dict(ray_init or {})
        self.start_timeout = float(start_timeout)
        self.slots: List[_Slot] = []
        self._next_number = 0
        self._weights: Dict[int, float] = {}  # speeds the current plan is made for
        self.failures = 0  # over the pool's life
        self.last_call: Dict[str, Any] = {}
        self._ray: Optional[ModuleType] = None  # the connected ``ray`` module, once started

    # -- start-up -------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        """Whether :meth:`start` has connected to Ray and launched the workers."""
        return self._ray is not None

    def start(self) -> None:
        """Connect to (or start) Ray and start the workers; waits until they are up (no-op when started).

        Raises:
            ValueError: the requested workers do not fit in the cluster's resources.
            zeroth.distributed.WorkerFailureError: a worker failed to start, or not all started
                within ``start_timeout`` seconds.
        """
        if self._ray is not None:
            return
        ray = connect(self.address, self.ray_init)
        total = ray.cluster_resources()
        res = self.resources
        if res is None:
            res = {"GPU": 1.0} if total.get("GPU", 0) >= 1 else {"CPU": 1.0}
        fits = min(int(total.get(k, 0) // v) for k, v in res.items() if v > 0 and k != "memory")
        count = self.num_workers if self.num_workers is not None else fits
        if count < 1 or count > fits:
            have = ", ".join(f"{k}={total.get(k, 0):g}" for k in res)
            raise ValueError(f"num_workers: {count} worker(s) with {res} each do not fit in this Ray cluster ({have})")
        self.resources = res
        self.num_workers = count
        self._ray = ray
        for _ in range(count):
            self._add_slot()
        self._await_started(all_of=True)

    def _connected(self) -> ModuleType:
        """The ``ray`` module :meth:`start` connected (only called once the pool has started).

        Raises:
            RuntimeError: the pool has not started (or was closed).
        """
        if self._ray is None:
            raise RuntimeError("the Ray worker pool has not started (call start() first)")
        return self._ray

    def _add_slot(self) -> _Slot:
        ray = self._connected()
        if self.resources is None:  # start() sets the resources before it adds a slot
            raise RuntimeError("the Ray worker pool has not started (call start() first)")
        res = dict(self.resources)
        options: Dict[str, Any] = {
            "num_cpus": res.pop("CPU", 0.0),
            "num_gpus": res.pop("GPU", 0.0),
            "max_restarts": 0,  # a dead worker is replaced by the pool, its work re-run elsewhere
        }
        if "memory" in res:
            options["memory"] = res.pop("memory")
        if res:
            options["resources"] = res
        threads = max(1, int(options["num_cpus"]))
        handle = ray.remote(self.actor_cls).options(**options).remote(threads, *self.actor_args)
        slot = _Slot(self._next_number, handle, handle.ready.remote())
        self._next_number += 1
        self.slots.append(slot)
        return slot

    def _await_started(self, all_of: bool = False, timeout: Optional[float] = None) -> None:
        """Mark workers that have started; ``all_of`` waits for every one, else only polls."""
        waiting = {s.ready: s for s in self.slots if not s.started}
        if not waiting:
            return
        ray = self._connected()
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        while waiting:
            left = max(0.0, deadline - time.monotonic()) if all_of else 0
            done, _ = ray.wait(list(waiting), num_returns=len(waiting) if all_of else 1, timeout=left)
            if not done:
                if all_of:
                    raise WorkerFailureError(
                        f"{len(waiting)} Ray worker(s) did not start within "
                        f"{self.start_timeout:g} s (resources {self.resources})"
                    )
                return
            for ref in done:
                slot = waiting.pop(ref)
                try:
                    slot.info = ray.get(ref)
                    slot.started = True
                except ray.exceptions.RayError as err:
                    self.slots.remove(slot)
                    if all_of:
                        raise WorkerFailureError(f"a Ray worker failed to start: {err}") from err
                    warnings.warn(
                        f"a replacement Ray worker failed to start ({type(err).__name__}); "
                        f"the pool goes on with {len(self.live())} worker(s)",
                        WorkerFailureWarning,
                        stacklevel=3,
                    )

    def live(self) -> List[_Slot]:
        """The workers that have started (and not died)."""
        return [s for s in self.slots if s.started]

    def close(self) -> None:
        """Stop every worker (Ray itself keeps running)."""
        if self._ray is not None:
            for s in self.slots:
                try:
                    self._ray.kill(s.handle)
                except Exception:  # already gone
                    pass
        self.slots = []
        self._ray = None
        self._weights = {}

    # -- planning -------------------------------------------------------------------------
    def plan(self, num_units: int) -> List[tuple]:
        """``[(slot, piece), ...]``: the units ``0..num_units-1`` shared out over the live workers.

        A piece is a list of blocks (see :mod:`zeroth.distributed.split`); workers left
        without a block get no piece. With no units at all, one worker gets an empty piece
        (the base loss may still be needed).
        """
        self.start()
        self._await_started()
        slots = self.live()
        if not slots:
            self._await_started(all_of=True)
            slots = self.live()
        if self.balance == "measured" and any(s.number not in self._weights for s in slots):
            self._reweigh(slots)
        weights = [1.0 if self.balance == "even" else self._weights[s.number] for s in slots]
        pieces = split.assign(split.blocks(num_units, self.blocks_per_worker * len(slots)), weights)
        return [(s, p) for s, p in zip(slots, pieces) if p]

    def _reweigh(self, slots: Sequence[_Slot]) -> None:
        known = [s.speed for s in slots if s.speed]
        default = sum(known) / len(known) if known else 1.0
        self._weights = {s.number: (s.speed or default) for s in slots}

    # -- running --------------------------------------------------------------------------
    def run(self, plan: Sequence[tuple], submit: Callable[[Any, int], Any], what: str = "a call") -> List[Any]:
        """Results of ``submit(handle, i)`` for every piece ``i`` of ``plan``, in order.

        Each result must be a dict with ``"seconds"`` (the worker's own compute time; it is
        used to measure speeds) and may have ``"cpu_seconds"`` (CPU time of that work:
        ``last_call["core_share"]`` is their mean ratio, below 1 when workers wait for a core).
        Application errors raised on a worker are re-raised here (the original exception,
        with a note naming the worker); a dead worker's piece is re-run elsewhere (see the
        module doc).

        Args:
            plan: ``[(slot, piece), ...]`` from :meth:`plan`.
            submit: ``submit(actor handle, i) -> ObjectRef`` starting piece ``i``.
            what: how the call is named in warnings and errors.

        Returns:
            The results, one per piece, in the order of ``plan``.

        Raises:
            zeroth.distributed.WorkerFailureError: more than ``max_failures`` worker failures in
                this call, or no worker left to re-run a failed piece. Queued work is cancelled.
        """
        ray = self._connected()
        start = time.perf_counter()
        sizes = [split.piece_size(p) for _, p in plan]
        results: List[Any] = [None] * len(plan)
        pending: Dict[Any, tuple] = {}
        for i, (slot, _) in enumerate(plan):
            pending[submit(slot.handle, i)] = (i, slot)
        failures: List[str] = []
        ran_on: Dict[int, _Slot] = {}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                ref = done[0]
                i, slot = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                    ran_on[i] = slot
                    continue
                except ray.exceptions.RayTaskError as err:
                    cause = getattr(err, "cause", None) or err
                    if not _is_resource_failure(cause):
                        add_note(cause, f"zeroth: raised on Ray {slot} in {what}")
                        raise cause from None
                    reason = f"{type(cause).__name__}: {cause}"
                except ray.exceptions.RayError as err:  # the actor died, its node was lost, ...
                    reason = f"{type(err).__name__}"
                    self._retire(slot)
                failures.append(f"{slot}: {reason.splitlines()[0][:200]}")
                self.failures += 1
                if len(failures) > self.max_failures:
                    raise WorkerFailureError(
                        f"{len(failures)} Ray worker failure(s) in {what}, more than max_failures="
                        f"{self.max_failures}; nothing was changed. Failures: " + "; ".join(failures)
                    )
                target = self._rerun_target(pending, sizes, exclude=slot)
                warnings.warn(
                    f"zeroth: Ray {slot} failed ({reason.splitlines()[0][:120]}); its piece of {what} "
                    f"runs again on {target}",
                    WorkerFailureWarning,
                    stacklevel=3,
                )
                pending[submit(target.handle, i)] = (i, target)
        except BaseException:
            for ref in pending:  # drop work nobody will read (queued tasks; running ones finish)
                try:
                    ray.cancel(ref)
                except Exception:
                    pass
            raise
        wall = time.perf_counter() - start
        self._measure(ran_on, sizes, results)
        compute = max((r["seconds"] for r in results), default=0.0)
        share = [r["cpu_seconds"] / r["seconds"] for r in results if r.get("cpu_seconds") and r["seconds"] > 0]
        self.last_call = {
            "seconds": wall,
            "compute": compute,
            "overhead": max(0.0, wall - compute),
            "pieces": sizes,
            "failures": len(failures),
            "core_share": sum(share) / len(share) if share else None,
        }
        return results

    def _retire(self, slot: _Slot) -> None:
        """Drop a dead worker and start a replacement (it joins once started)."""
        if slot in self.slots:
            self.slots.remove(slot)
            self._weights.pop(slot.number, None)
            try:
                self._connected().kill(slot.handle)
            except Exception:
                pass
            self._add_slot()

    def _rerun_target(self, pending: Mapping[Any, tuple], sizes: Sequence[int], exclude: _Slot) -> _Slot:
        """The live worker expected to be free first (waits for a replacement when none is left)."""
        self._await_started()
        slots = [s for s in self.live() if s is not exclude]
        if not slots:
            self._await_started(all_of=True)
            slots = [s for s in self.live() if s is not exclude]
        if not slots:
            raise WorkerFailureError("no Ray worker is left to run the work of a failed one")

        def busy(s: _Slot) -> float:
            queued = sum(sizes[i] for i, owner in pending.values() if owner is s)
            return queued / (s.speed or 1.0)

        return min(slots, key=lambda s: (busy(s), s.number))

    def _measure(self, ran_on: Mapping[int, _Slot], sizes: Sequence[int], results: Sequence[Any]) -> None:
        """Update speeds (EMA of units/s); re-plan when the call was out of balance."""
        times: Dict[int, float] = {}
        for i, slot in ran_on.items():
            seconds = max(float(results[i]["seconds"]), 1e-9)
            times[slot.number] = times.get(slot.number, 0.0) + seconds
            rate = max(sizes[i], 1) / seconds
            slot.speed = rate if slot.speed is None else 0.5 * slot.speed + 0.5 * rate
        if self.balance != "measured" or len(times) < 2:
            return
        mean = sum(times.values()) / len(times)
        if max(times.values()) > (1 + self.tolerance) * mean:
            self._reweigh(self.live())

    def describe(self) -> List[Dict[str, Any]]:
        """One dict per live worker: number, device, node, pid, measured speed (units/s)."""
        return [{"worker": s.number, **s.info, "speed": s.speed} for s in self.live()]


def _is_resource_failure(err: BaseException) -> bool:
    """An out-of-memory error on a worker: worth re-running elsewhere, unlike a bug in the objective."""
    try:
        import torch

        if isinstance(err, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return False
