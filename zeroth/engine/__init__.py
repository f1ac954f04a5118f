"""Evaluators: how the losses of a direction set are computed (fast).

Renamed in 0.1 (the old names are deprecated aliases for one release, with a
:class:`~zeroth.errors.ZerothDeprecationWarning`): ``Sequential`` → :class:`SequentialEvaluator`,
``Batched`` → :class:`BatchedEvaluator`, ``FeatureReuse`` → :class:`FeatureReuseEvaluator`,
``Auto`` → :class:`AutoEvaluator` (the old names collided with ``torch.nn.Sequential`` and
:func:`zeroth.batched`). The registry names (``evaluator="sequential"``, ``"batched"``,
``"feature_reuse"``, ``"auto"``) are unchanged.
"""

from typing import Any

from ..errors import warn_deprecated
from .auto import AutoEvaluator
from .base import EVALUATORS, Evaluator, Losses, StepState
from .batched import BatchedEvaluator
from .feature_reuse import FeatureReuseEvaluator
from .sequential import SequentialEvaluator

__all__ = [
    "AutoEvaluator",
    "BatchedEvaluator",
    "EVALUATORS",
    "Evaluator",
    "FeatureReuseEvaluator",
    "Losses",
    "SequentialEvaluator",
    "StepState",
]

RENAMED = {
    "Sequential": "SequentialEvaluator",
    "Batched": "BatchedEvaluator",
    "FeatureReuse": "FeatureReuseEvaluator",
    "Auto": "AutoEvaluator",
}
"""Deprecated evaluator names → their replacements (one release)."""


def __getattr__(name: str) -> Any:
    """The deprecated evaluator names of :data:`RENAMED`, with a ZerothDeprecationWarning."""
    if name in RENAMED:
        warn_deprecated(f"zeroth.engine.{name}", f"zeroth.engine.{RENAMED[name]}")
        return globals()[RENAMED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
