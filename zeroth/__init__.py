"""zeroth: train PyTorch models and couple them to black-box programs without backpropagation."""
from .engine import Evaluator, Sequential
from .errors import EvaluationError, NonFiniteLossWarning, ZerothError
from .estimators import CGE, RGE, SPSA, Estimator, zo_gradient, zo_jacobian
from .objective import Objective
from .optim import ZOOptimizer, estimate_gradient

__version__ = "0.1.0"

__all__ = [
    "CGE", "EvaluationError", "Estimator", "Evaluator", "NonFiniteLossWarning", "Objective", "RGE", "SPSA",
    "Sequential", "ZOOptimizer", "ZerothError", "estimate_gradient", "zo_gradient", "zo_jacobian",
]
