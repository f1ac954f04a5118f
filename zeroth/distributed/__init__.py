"""Distributed evaluation on Ray: the losses of a step, or a black box's query points, over a cluster.

``RayEvaluator`` (an evaluator: ``ZOOptimizer(..., evaluator=RayEvaluator())``) and
``RayPool`` (a black-box program: ``BlackBox(RayPool(simulate))``). Ray is an extra
(``pip install 'zeroth-optim[ray]'``): this package imports without it, and using either
class without it raises an ImportError that says so.
"""

from .evaluator import RayEvaluator
from .pool import WorkerFailureError, WorkerFailureWarning
from .program import RayPool

__all__ = ["RayEvaluator", "RayPool", "WorkerFailureError", "WorkerFailureWarning"]
