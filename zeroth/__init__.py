"""zeroth: train PyTorch models and couple them to black-box programs without backpropagation."""
from .blackbox import BlackBox, Subprocess, batched, from_numpy
from .distributed import RayEvaluator, RayPool
from .engine import Batched, Evaluator, FeatureReuse, Sequential
from .errors import EvaluationError, NonFiniteLossWarning, ZerothError
from .estimators import CGE, RGE, SPSA, Estimator, zo_gradient, zo_jacobian
from .objective import Objective
from .optim import ZOOptimizer, estimate_gradient
from .sparsity import DynamicMask, FixedMask, grasp_ratios

__version__ = "0.1.0"

__all__ = [
    "BlackBox", "Batched", "CGE", "DynamicMask", "EvaluationError", "Estimator", "Evaluator", "FeatureReuse",
    "FixedMask", "NonFiniteLossWarning", "Objective", "RGE", "RayEvaluator", "RayPool", "SPSA", "Sequential", "Subprocess", "ZOOptimizer",
    "ZerothError", "batched", "estimate_gradient", "from_numpy", "grasp_ratios", "minimize", "zo_gradient",
    "zo_jacobian",
]


def __getattr__(name):
    """``zeroth.minimize`` imports the constrained solver (needs scipy: the ``science`` extra) on first use."""
    if name == "minimize":
        from ._optional import require

        require("scipy.optimize", "science")
        from .constrained import minimize

        return minimize
    raise AttributeError(f"module 'zeroth' has no attribute {name!r}")
