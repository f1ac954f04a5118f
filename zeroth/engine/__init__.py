"""Evaluators: how the losses of a direction set are computed (fast)."""
from .auto import Auto
from .base import EVALUATORS, Evaluator, Losses, StepState
from .sequential import Sequential

__all__ = ["Auto", "EVALUATORS", "Evaluator", "Losses", "Sequential", "StepState"]
