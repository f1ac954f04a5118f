"""Gradient estimators (CGE, RGE, SPSA) and their direction sets.

Every estimator perturbs by ``mu`` (μ), an *absolute* step in the units of the parameter
(not relative to the parameter's magnitude, unlike scipy.optimize's ``finite_diff_rel_step``).
The formulas and references are in :mod:`zeroth.estimators.estimators` (Spall 1992;
Nesterov & Spokoiny 2017; Duchi et al. 2015; Malladi et al. 2023, MeZO; Chen et al. 2024,
DeepZero).
"""

from .directions import Coordinates, Directions, RandomDirections
from .estimators import CGE, ESTIMATORS, RGE, SPSA, Estimator, draw_seed
from .functional import zo_gradient, zo_jacobian

__all__ = [
    "CGE",
    "Coordinates",
    "Directions",
    "ESTIMATORS",
    "Estimator",
    "RGE",
    "RandomDirections",
    "SPSA",
    "draw_seed",
    "zo_gradient",
    "zo_jacobian",
]
