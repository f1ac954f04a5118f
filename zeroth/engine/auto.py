"""``evaluator="auto"``: the first evaluator that computes a step exactly, chosen by rules, never by time."""

from __future__ import annotations

import ast
import logging
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..estimators.directions import Directions
from .base import EVALUATORS, Evaluator, Losses, Support, Unsupported

logger = logging.getLogger("zeroth.engine")

BATCHED_CPU_MAX_ACTIVATIONS = 2**16
"""On a CPU, ``BatchedEvaluator`` is preferred to ``SequentialEvaluator`` when one forward produces at most this many
activation elements (module outputs, counted once on the first step of a key): below it the
per-call overhead that vmap saves dominates, above it the arithmetic does and the plain loop
wins (``python -m bench.engine``). On CUDA ``BatchedEvaluator`` is always preferred."""


@EVALUATORS.register("auto")
class AutoEvaluator(Evaluator):
    """Delegates each step to the first evaluator, in a fixed order, that computes it exactly.

    The order is ``preferred`` (FeatureReuseEvaluator: strictly less arithmetic for CGE on chains), then
    ``candidates`` (BatchedEvaluator, then SequentialEvaluator, the always-correct reference). A candidate is
    skipped when its ``supports`` says no (static rules, :mod:`zeroth.engine.rules`), and marked
    unsupported for the step's *key* (model class, input shape/dtype/device, direction kind and
    count) when it raises while evaluating (:class:`~zeroth.engine.rules.Unsupported`, or any
    exception such as a forward that vmap cannot trace): everything is restored and the next
    candidate runs the same step. Between BatchedEvaluator and SequentialEvaluator a cost rule
    decides — BatchedEvaluator on CUDA, and on a CPU while one forward produces at most
    :data:`BATCHED_CPU_MAX_ACTIVATIONS` activation elements (counted on the key's first step,
    which BatchedEvaluator runs).

    Nothing depends on wall-clock time, so the same seed gives the same run under any load.
    ``tune=True`` instead times every supporting candidate on the first step of each key and
    keeps the fastest (results still agree to float rounding, but which rounding depends on the
    machine's load then); the choices are saved in the optimizer's ``state_dict`` either way.

    ``last`` is the evaluator that produced the latest result; ``decisions[key]`` records, per
    key, the evaluator chosen and why each earlier one was not (also logged at INFO level on
    the ``"zeroth.engine"`` logger the first time a key is seen).

    Args:
        preferred: evaluators tried first whenever they support a case (default:
            ``[FeatureReuseEvaluator()]``).
        candidates: the rest, in order (default: ``[BatchedEvaluator(), SequentialEvaluator()]``;
            a SequentialEvaluator is appended when none is listed, so every case has an evaluator).
        tune: time the supporting candidates on each key's first step and keep the fastest.

    Raises:
        TypeError: ``tune`` is not a bool.
    """

    name = "auto"

    def __init__(
        self,
        preferred: Optional[Sequence[Evaluator]] = None,
        candidates: Optional[Sequence[Evaluator]] = None,
        *,
        tune: bool = False,
    ):
        from .batched import BatchedEvaluator
        from .feature_reuse import FeatureReuseEvaluator
        from .sequential import SequentialEvaluator

        if not isinstance(tune, bool):
            raise TypeError(f"tune must be a bool, got {type(tune).__name__}")
        self.preferred: List[Evaluator] = list(preferred) if preferred is not None else [FeatureReuseEvaluator()]
        self.candidates: List[Evaluator] = (
            list(candidates) if candidates is not None else [BatchedEvaluator(), SequentialEvaluator()]
        )
        if not any(isinstance(c, SequentialEvaluator) for c in self.candidates):
            self.candidates.append(SequentialEvaluator())
        self.tune = tune
        self.last: Optional[Evaluator] = None
        self.timings: Dict[str, Dict[str, float]] = {}
        self.decisions: Dict[str, Dict[str, Any]] = {}
        self._choice: Dict[str, Evaluator] = {}
        self._failed: Dict[str, Dict[str, str]] = {}

    @staticmethod
    def _key(objective: Any, dirs: Directions) -> str:
        """What the choice depends on: model class, batch shape/dtype/device, kind and count of evaluations."""
        model = getattr(objective, "model", None)
        inputs = getattr(objective, "inputs", None)
        batch = (tuple(inputs.shape), str(inputs.dtype), str(inputs.device)) if isinstance(inputs, Tensor) else None
        return repr((type(model).__name__ if model is not None else "closure", batch, type(dirs).__name__, len(dirs)))

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The choices and failures so far (saved by the optimizer: a resumed run makes the same ones)."""
        return {
            "choice": {k: repr(v) for k, v in self._choice.items()},
            "timings": dict(self.timings),
            "failed": {k: dict(v) for k, v in self._failed.items()},
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the choices and failures of :meth:`state_dict` (choices naming an evaluator
        this instance does not hold are dropped and made again)."""
        by_repr = {repr(c): c for c in self.preferred + self.candidates}
        self._choice = {k: by_repr[r] for k, r in state.get("choice", {}).items() if r in by_repr}
        self.timings = dict(state.get("timings", {}))
        self._failed = {k: dict(v) for k, v in state.get("failed", {}).items()}

    # -- the step ------------------------------------------------------------------------
    def evaluate(self, objective: Any, params: Sequence[Tensor], dirs: Directions) -> Losses:
        """The losses of the first candidate that supports this case (see :meth:`Evaluator.evaluate`).

        A candidate that declines (``supports``) is passed over; one that raises is marked
        unsupported for this case (logged on ``"zeroth.engine"``) and the next one runs, down
        to :class:`~zeroth.engine.SequentialEvaluator`, whose exceptions propagate.

        Raises:
            zeroth.engine.base.Unsupported: no candidate supports the case (each one's reason listed).
            Exception: what the last candidate raises.
        """
        key = self._key(objective, dirs)
        failed = self._failed.setdefault(key, {})
        skipped: List[Tuple[str, str]] = []
        usable: List[Evaluator] = []
        for ev in self.preferred + self.candidates:
            if repr(ev) in failed:
                skipped.append((repr(ev), failed[repr(ev)]))
                continue
            support = ev.supports(objective, dirs, params)
            if support:
                usable.append(ev)
            else:
                skipped.append((repr(ev), getattr(support, "reason", "") or "declined"))
        if not usable:
            raise Unsupported(
                "no evaluator supports this objective and direction set: " + "; ".join(f"{e}: {r}" for e, r in skipped)
            )
        if self.tune and key not in self._choice and not any(ev in self.preferred for ev in usable[:1]):
            return self._timed(key, objective, params, dirs, usable, skipped)
        order = self._order(key, usable)
        for i, ev in enumerate(order):
            try:
                result = ev.evaluate(objective, params, dirs)
            except Exception as err:  # noqa: BLE001 - a fast path that fails declines; the reference re-raises
                if i == len(order) - 1:
                    raise
                reason = f"raised {type(err).__name__}: {err}"
                failed[repr(ev)] = reason
                skipped.append((repr(ev), reason))
                self._choice.pop(key, None)
                logger.info("zeroth auto: %r failed on %s (%s); trying %r", ev, key, reason, order[i + 1])
                continue
            self._record(key, ev, skipped)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _order(self, key: str, usable: List[Evaluator]) -> List[Evaluator]:
        """``usable`` in the order to try: a remembered choice first, else preferred, then the cost rule."""
        from .batched import BatchedEvaluator

        if key in self._choice and self._choice[key] in usable:
            chosen = self._choice[key]
            return [chosen] + [ev for ev in usable if ev is not chosen]
        first = usable[0]
        if isinstance(first, BatchedEvaluator) and not self._batched_preferred(key):
            # the key's first step ran BatchedEvaluator and counted its activations: the cost rule says no
            return [ev for ev in usable if ev is not first] + [first]
        return usable

    def _batched_preferred(self, key: str) -> bool:
        counted = self.decisions.get(key, {}).get("activations")
        if counted is None:
            return True
        return "cuda" in key or counted <= BATCHED_CPU_MAX_ACTIVATIONS

    def _record(self, key: str, ev: Evaluator, skipped: List[Tuple[str, str]]) -> None:
        from .batched import BatchedEvaluator

        self.last = ev
        new = key not in self.decisions
        entry = self.decisions.setdefault(key, {})
        entry.update(chosen=repr(ev), skipped=list(skipped))
        if isinstance(ev, BatchedEvaluator) and ev.last_activations is not None and "activations" not in entry:
            entry["activations"] = ev.last_activations
            if not self._batched_preferred(key):
                entry["rule"] = (
                    f"{ev.last_activations} activation elements > {BATCHED_CPU_MAX_ACTIVATIONS} on a CPU: "
                    "later steps run the next candidate"
                )
        if ev in self.preferred or not isinstance(ev, BatchedEvaluator) or self._batched_preferred(key):
            self._choice[key] = ev
        else:
            self._choice.pop(key, None)
        if new:
            logger.info("zeroth auto: %s runs %r%s", key, ev, "".join(f"; {e} declined: {r}" for e, r in skipped))

    def _timed(self, key, objective, params, dirs, usable, skipped) -> Losses:
        """``tune=True``: time every supporting candidate on this step, keep the fastest."""
        times: Dict[str, float] = {}
        result: Optional[Losses] = None
        snapshot = _Snapshot(objective)
        ran: List[Evaluator] = []
        for i, ev in enumerate(usable):
            if ran:  # each candidate starts from the same state: buffers move once per step
                snapshot.restore()
            start = time.perf_counter()
            try:
                result = ev.evaluate(objective, params, dirs)
            except Exception as err:  # noqa: BLE001 - see evaluate
                if i == len(usable) - 1 and not ran:
                    raise
                self._failed.setdefault(key, {})[repr(ev)] = f"raised {type(err).__name__}: {err}"
                continue
            times[repr(ev)] = time.perf_counter() - start
            ran.append(ev)
        self.timings[key] = times
        best = min(ran, key=lambda e: times[repr(e)])
        self._choice[key] = best
        self.last = ran[-1]
        self.decisions[key] = {"chosen": repr(best), "skipped": list(skipped), "timings": times}
        assert result is not None  # set by the last candidate in ``ran`` (min() above raised if none ran)
        return result

    def explain(self) -> str:
        """Per case seen (model, input, directions): the evaluator that runs it, then one indented
        line per earlier evaluator saying why it does not."""
        lines = []
        for key, entry in self.decisions.items():
            rule = f" [{entry['rule']}]" if "rule" in entry else ""
            lines.append(f"{_describe(key)}: {entry.get('chosen')}{rule}")
            lines.extend(f"  not {e}: {r}" for e, r in entry.get("skipped", []))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"AutoEvaluator(preferred={self.preferred!r}, candidates={self.candidates!r}" + (
            ", tune=True)" if self.tune else ")"
        )


def _describe(key: str) -> str:
    """A case key (:meth:`AutoEvaluator._key`) in words: ``"SmallCNN on input (32, 1, 8, 8)
    torch.float32 (cpu), Coordinates x 1490"`` (direction set kind x its number of evaluations)."""
    try:
        model, batch, kind, count = ast.literal_eval(key)
    except (ValueError, SyntaxError, TypeError):  # a key saved by another version: shown as is
        return key
    if model == "closure":
        return f"a plain closure, {kind} x {count}"
    where = f" on input {batch[0]} {batch[1]} ({batch[2]})" if batch else ""
    return f"{model}{where}, {kind} x {count}"


class _Snapshot:
    """The objective's model buffers and the global RNG state, to rerun a step from the same start."""

    def __init__(self, objective: Any):
        model = getattr(objective, "model", None)
        self.buffers = list(model.buffers()) if model is not None else []
        self.values = [b.detach().clone() for b in self.buffers]
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        with torch.no_grad():
            for b, v in zip(self.buffers, self.values):
                b.copy_(v)
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def support_table(
    objective: Any, params: Sequence[Tensor], dirs: Directions, evaluators: Optional[Sequence[Evaluator]] = None
) -> List[Tuple[str, Support]]:
    """``(evaluator, Support)`` for each evaluator on this case (default: FeatureReuseEvaluator,
    BatchedEvaluator, SequentialEvaluator)."""
    from .batched import BatchedEvaluator
    from .feature_reuse import FeatureReuseEvaluator
    from .sequential import SequentialEvaluator

    evs = (
        list(evaluators)
        if evaluators is not None
        else [FeatureReuseEvaluator(), BatchedEvaluator(), SequentialEvaluator()]
    )
    return [(repr(ev), ev.supports(objective, dirs, params)) for ev in evs]
