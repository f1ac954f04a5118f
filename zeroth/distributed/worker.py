"""What runs inside the Ray actors (plain classes: ``ray.remote`` is applied by the pool).

``EvaluatorWorker`` keeps one copy of the model (loaded once per model version from the
object store) and a local evaluator; each call copies the step's parameters, buffers,
train/eval flags and RNG state into it and evaluates one piece of the direction set.
``ProgramWorker`` runs a black-box program on a slice of query points.
"""

from __future__ import annotations

import copy
import io
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..engine import EVALUATORS, AutoEvaluator, Losses
from ..estimators.directions import Directions
from . import split


def device_of_worker() -> torch.device:
    """The GPU Ray gave this actor (it sees only that one), else the CPU."""
    import ray

    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def move(value: Any, device: torch.device) -> Any:
    """Tensors in ``value`` (nested lists, tuples, dicts) moved to ``device``."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(move(v, device) for v in value)
    if isinstance(value, dict):
        return {k: move(v, device) for k, v in value.items()}
    return value


def _info(device: torch.device) -> Dict[str, Any]:
    import ray

    return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(), "device": str(device)}


class PieceAuto(AutoEvaluator):
    """``auto`` inside a worker: decides once per model and batch shape, whatever the piece size.

    (The plain rule keys on the number of evaluations too; a worker's piece size moves with
    the balance, and re-timing every candidate each time would skew the measured speeds.)
    """

    @staticmethod
    def _key(objective: Any, dirs: Directions) -> str:
        model = getattr(objective, "model", None)
        inputs = getattr(objective, "inputs", None)
        batch = (tuple(inputs.shape), str(inputs.dtype), str(inputs.device)) if isinstance(inputs, Tensor) else None
        return repr((type(model).__name__, batch, type(dirs).__name__))


def local_evaluator(inner: Any):
    """The worker's evaluator from a name or an instance (``auto`` becomes :class:`PieceAuto`)."""
    ev = EVALUATORS.create(inner, "inner")
    if type(ev) is AutoEvaluator:
        ev = PieceAuto(ev.preferred, ev.candidates)
    return ev


def counters(model: Any) -> Dict[int, Any]:
    """The modules of ``model`` that count their program calls (BlackBox), by position in ``modules()``."""
    return {
        i: m
        for i, m in enumerate(model.modules())
        if callable(getattr(m, "counts", None)) and callable(getattr(m, "add_counts", None))
    }


class EvaluatorWorker:
    """One Ray actor: a model copy and a local evaluator (see module doc).

    Args:
        threads: torch intra-op threads of this actor.
        inner: the local evaluator's name or instance (``"auto"`` becomes :class:`PieceAuto`).
    """

    def __init__(self, threads: int, inner: Any):
        torch.set_num_threads(threads)
        self.device = device_of_worker()
        self.inner = local_evaluator(inner)
        self.version: Optional[int] = None
        self.model: Optional[nn.Module] = None
        self.loads = 0  # how often a model was received (tests: once per structure)

    def ready(self) -> Dict[str, Any]:
        """``{"pid", "node", "device"}`` of this actor; the pool waits for it to know the actor started."""
        return _info(self.device)

    def counters(self) -> Dict[str, Any]:
        """``{"loads", "version", "evaluator"}``: model loads so far, model version, the evaluator used last."""
        return {
            "loads": self.loads,
            "version": self.version,
            "evaluator": repr(getattr(self.inner, "last", None) or self.inner),
        }

    def _load(self, version: int, model_ref: Any) -> None:
        import ray

        blob = ray.get(model_ref)
        model = torch.load(io.BytesIO(blob), map_location=self.device, weights_only=False).to(self.device)
        self.model = model
        self.parameters = list(model.parameters())
        self.tensors = self.parameters + list(model.buffers())
        self.modules = list(model.modules())
        self.version = version
        self.loads += 1

    def evaluate(self, model_box: List[Any], step_box: List[Any], piece: Directions, report: bool) -> Dict[str, Any]:
        """Losses of ``piece`` at the step's point; ``report`` adds buffers and RNG after the first evaluation.

        Raises:
            RuntimeError: no model was loaded (cannot happen: the first call loads its version's model).
            Exception: what the local evaluator or the objective raised (the pool re-raises it on the driver).
        """
        import ray

        version, model_ref = model_box
        if version != self.version:
            self._load(version, model_ref)
        model = self.model
        if model is None:  # never: self.version starts as None, and _load sets both
            raise RuntimeError("EvaluatorWorker: no model was loaded")
        step = ray.get(step_box[0])
        with torch.no_grad():
            for t, v in zip(self.tensors, step["state"]):
                t.copy_(v)
        for m, flag in zip(self.modules, step["training"]):
            m.training = flag
        torch.set_rng_state(step["rng"])
        cuda = self.device.type == "cuda" and step["cuda_rng"] is not None
        if cuda:
            torch.cuda.set_rng_state(step["cuda_rng"], self.device)
        objective = copy.copy(step["objective"])
        objective.model = model
        objective.inputs = move(objective.inputs, self.device)
        objective.targets = move(objective.targets, self.device)
        params = [self.parameters[i] for i in step["param_index"]]
        dirs = split.to_device(piece, [p.device for p in params])
        counted = counters(model)
        before = {i: m.counts() for i, m in counted.items()}
        start, cpu = time.perf_counter(), time.thread_time()
        losses: Losses = self.inner.evaluate(objective, params, dirs)
        if cuda:
            torch.cuda.synchronize(self.device)
        out: Dict[str, Any] = {
            "base": losses.base.detach().cpu() if losses.base is not None else None,
            "perturbed": losses.perturbed.detach().cpu(),
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.thread_time() - cpu,
            # program calls made by black boxes inside this copy, for the driver's counters
            "counts": {i: {k: v - before[i][k] for k, v in m.counts().items()} for i, m in counted.items()},
        }
        if report:
            out["buffers"] = [b.detach().cpu().clone() for b in model.buffers()]
            out["rng"] = torch.get_rng_state()
            out["cuda_rng"] = torch.cuda.get_rng_state(self.device) if cuda else None
        return out


class ProgramWorker:
    """One Ray actor running a black-box program (sent once, when the actor starts).

    Args:
        threads: torch intra-op threads of this actor.
        program: the :class:`~zeroth.blackbox.Program` to run.
    """

    def __init__(self, threads: int, program: Any):
        torch.set_num_threads(threads)
        self.device = device_of_worker()
        self.program = program

    def ready(self) -> Dict[str, Any]:
        """``{"pid", "node", "device"}`` of this actor; the pool waits for it to know the actor started."""
        return _info(self.device)

    def call(self, points: Tensor, context: Sequence[Any], rows: Sequence[bool]) -> Dict[str, Any]:
        """The program at each of ``points`` (K, ...); ``rows[c]``: context ``c`` has one row per point."""
        start, cpu = time.perf_counter(), time.thread_time()
        if self.program.batched:
            out = self.program(points, *context)
        else:
            outs = [
                self.program(points[k], *(c[k] if r else c for c, r in zip(context, rows)))
                for k in range(points.shape[0])
            ]
            out = torch.stack([torch.as_tensor(o) for o in outs]) if outs else torch.empty(0)
        return {
            "out": torch.as_tensor(out).detach().cpu(),
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.thread_time() - cpu,
        }
