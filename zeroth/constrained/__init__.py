"""Constrained minimisation (NPASA) in the shape of :func:`scipy.optimize.minimize`,
with exact, finite-difference or zeroth-order gradients, and the Hock–Schittkowski test set."""

from . import problems
from .minimize import STATUS_MESSAGES, SolverOptionWarning, minimize

__all__ = ["STATUS_MESSAGES", "SolverOptionWarning", "minimize", "problems"]
