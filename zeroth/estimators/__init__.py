"""Gradient estimators (CGE, RGE, SPSA) and their direction sets."""
from .directions import Coordinates, Directions, RandomDirections
from .estimators import CGE, ESTIMATORS, RGE, SPSA, Estimator, draw_seed
from .functional import zo_gradient, zo_jacobian

__all__ = [
    "CGE", "Coordinates", "Directions", "ESTIMATORS", "Estimator", "RGE", "RandomDirections", "SPSA",
    "draw_seed", "zo_gradient", "zo_jacobian",
]
