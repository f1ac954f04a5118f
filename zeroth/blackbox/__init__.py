"""Black-box coupling: programs you cannot differentiate as autograd nodes with a ZO backward."""

from .directions import PointDirections
from .external import Subprocess
from .module import BlackBox
from .program import (
    NumpyFunction,
    Program,
    ProgramError,
    ProgramWarning,
    TensorFunction,
    as_program,
    batched,
    from_numpy,
)

__all__ = [
    "BlackBox",
    "NumpyFunction",
    "PointDirections",
    "Program",
    "ProgramError",
    "ProgramWarning",
    "Subprocess",
    "TensorFunction",
    "as_program",
    "batched",
    "from_numpy",
]
