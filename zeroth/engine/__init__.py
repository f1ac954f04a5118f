"""Evaluators: how the losses of a direction set are computed (fast)."""
from .auto import Auto
from .base import EVALUATORS, Evaluator, Losses, StepState
from .batched import Batched
from .feature_reuse import FeatureReuse
from .sequential import Sequential

__all__ = ["Auto", "Batched", "EVALUATORS", "Evaluator", "FeatureReuse", "Losses", "Sequential", "StepState"]
