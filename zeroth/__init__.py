"""zeroth: train PyTorch models and couple them to black-box programs without backpropagation.

``import zeroth`` imports torch and zeroth's own modules only: no optional dependency (scipy,
scikit-learn, matplotlib, Ray, ASE) and no compiler run. The compiled kernels of
:mod:`zeroth.ops` build on the first call of a hot path that uses them, and
:func:`zeroth.minimize` (the constrained solver, needs scipy: the ``science`` extra) is
imported on first access; it is not part of ``from zeroth import *``, so that works on a
core install.
"""

from .blackbox import BlackBox, Program, Subprocess, batched, from_numpy
from .distributed import RayEvaluator, RayPool
from .engine import AutoEvaluator, BatchedEvaluator, Evaluator, FeatureReuseEvaluator, Losses, SequentialEvaluator
from .errors import EvaluationError, NonFiniteLossWarning, ZerothDeprecationWarning, ZerothError, ZerothWarning
from .estimators import CGE, RGE, SPSA, Directions, Estimator, zo_gradient, zo_jacobian
from .objective import Objective
from .optim import ZOOptimizer, estimate_coefficients, estimate_gradient, sgd_step_
from .sparsity import DynamicMask, FixedMask, MaskRule, grasp_ratios

__version__ = "0.1.0"

__all__ = [
    "AutoEvaluator",
    "BatchedEvaluator",
    "BlackBox",
    "CGE",
    "Directions",
    "DynamicMask",
    "EvaluationError",
    "Estimator",
    "Evaluator",
    "FeatureReuseEvaluator",
    "FixedMask",
    "Losses",
    "MaskRule",
    "NonFiniteLossWarning",
    "Objective",
    "Program",
    "RGE",
    "RayEvaluator",
    "RayPool",
    "SPSA",
    "SequentialEvaluator",
    "Subprocess",
    "ZOOptimizer",
    "ZerothDeprecationWarning",
    "ZerothError",
    "ZerothWarning",
    "batched",
    "estimate_coefficients",
    "estimate_gradient",
    "from_numpy",
    "grasp_ratios",
    "sgd_step_",
    "zo_gradient",
    "zo_jacobian",
]  # not `minimize`: it needs scipy, and `from zeroth import *` must work without it


def __dir__():
    return sorted(set(globals()) | {"minimize"})


def __getattr__(name):
    """``zeroth.minimize`` imports the constrained solver (needs scipy: the ``science`` extra) on
    first use; the deprecated evaluator names (``zeroth.Sequential``, ``zeroth.Batched``,
    ``zeroth.FeatureReuse``) return their replacements with a ZerothDeprecationWarning."""
    if name == "minimize":
        from ._optional import require

        require("scipy.optimize", "science")
        from .constrained import minimize

        return minimize
    from .engine import RENAMED

    if name in RENAMED and name != "Auto":  # zeroth.Auto never existed
        from .errors import warn_deprecated

        warn_deprecated(f"zeroth.{name}", f"zeroth.{RENAMED[name]}")
        return globals()[RENAMED[name]]
    raise AttributeError(f"module 'zeroth' has no attribute {name!r}")
