"""zeroth: train PyTorch models and couple them to black-box programs without backpropagation.

``import zeroth`` imports torch and zeroth's own modules only: no optional dependency (scipy,
scikit-learn, matplotlib, Ray, ASE) and no compiler run. The compiled kernels of
:mod:`zeroth.ops` build on the first call of a hot path that uses them, and
:func:`zeroth.minimize` (the constrained solver, needs scipy: the ``science`` extra) is
imported on first access; it is not part of ``from zeroth import *``, so that works on a
core install.
"""

from .blackbox import BlackBox, Subprocess, batched, from_numpy
from .distributed import RayEvaluator, RayPool
from .engine import Batched, Evaluator, FeatureReuse, Sequential
from .errors import EvaluationError, NonFiniteLossWarning, ZerothError, ZerothWarning
from .estimators import CGE, RGE, SPSA, Estimator, zo_gradient, zo_jacobian
from .objective import Objective
from .optim import ZOOptimizer, estimate_gradient
from .sparsity import DynamicMask, FixedMask, grasp_ratios

__version__ = "0.1.0"

__all__ = [
    "BlackBox",
    "Batched",
    "CGE",
    "DynamicMask",
    "EvaluationError",
    "Estimator",
    "Evaluator",
    "FeatureReuse",
    "FixedMask",
    "NonFiniteLossWarning",
    "Objective",
    "RGE",
    "RayEvaluator",
    "RayPool",
    "SPSA",
    "Sequential",
    "Subprocess",
    "ZOOptimizer",
    "ZerothError",
    "ZerothWarning",
    "batched",
    "estimate_gradient",
    "from_numpy",
    "grasp_ratios",
    "zo_gradient",
    "zo_jacobian",
]  # not `minimize`: it needs scipy, and `from zeroth import *` must work without it


def __dir__():
    return sorted(set(globals()) | {"minimize"})


def __getattr__(name):
    """``zeroth.minimize`` imports the constrained solver (needs scipy: the ``science`` extra) on first use."""
    if name == "minimize":
        from ._optional import require

        require("scipy.optimize", "science")
        from .constrained import minimize

        return minimize
    raise AttributeError(f"module 'zeroth' has no attribute {name!r}")
